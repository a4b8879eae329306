"""response_logprobs (LM head on the response positions only) == the plain full-logits path."""

from __future__ import annotations

import torch

from openk1.data.padding import pad
from openk1.models.forward import position_ids, response_logprobs


def plain_response_logprobs(model, prompt_ids, prompt_mask, response_ids, action_mask):
    """The reference: logits at every position, then the response's slice, log-softmax, gather."""
    input_ids = torch.cat([prompt_ids, response_ids], 1)
    attention_mask = torch.cat([prompt_mask, action_mask], 1)
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids(attention_mask), use_cache=False).logits
    P = prompt_ids.shape[1]
    logp = torch.log_softmax(logits[:, P - 1:-1].float(), -1).gather(-1, response_ids[..., None])
    return logp.squeeze(-1) * action_mask


def batch(tokenizer):
    prompts = [tokenizer(p)["input_ids"] for p in ("12+3=", "7+845=", "1+1=")]   # left padding
    responses = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in ("\\boxed{15}", "852", "2")]
    prompt_ids, prompt_mask = pad(prompts, tokenizer.pad_token_id, side="left")
    response_ids, action_mask = pad(responses, tokenizer.pad_token_id, side="right")
    return prompt_ids, prompt_mask, response_ids, action_mask


def test_response_logprobs_equals_full_logits(tiny):
    model, tokenizer = tiny
    args = batch(tokenizer)
    assert args[0].shape == (3, 7) and args[2].shape == (3, 10)   # 3 rows, P = 7, T = 10

    fast = response_logprobs(model, *args)
    (fast * torch.linspace(-1, 1, 10)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = plain_response_logprobs(model, *args)
    (ref * torch.linspace(-1, 1, 10)).sum().backward()

    assert fast.shape == (3, 10)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)
    assert (fast[args[3] == 0] == 0).all() and (fast[args[3] == 1] < 0).all()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=0)


def test_response_logprobs_of_one_token_response(tiny):
    model, tokenizer = tiny
    prompt_ids, prompt_mask, response_ids, action_mask = batch(tokenizer)
    args = (prompt_ids, prompt_mask, response_ids[:, :1], action_mask[:, :1])
    torch.testing.assert_close(response_logprobs(model, *args), plain_response_logprobs(model, *args),
                               atol=1e-5, rtol=0)
