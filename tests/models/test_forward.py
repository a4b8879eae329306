"""response_logprobs (LM head on the response positions only) == the plain full-logits path."""

from __future__ import annotations

import torch

from openk1.models.forward import position_ids, response_logprobs
from openk1.padding import pad


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
    # lean vs HF forward, fp32: log-probs up to ~5 (ulp 4.8e-7) and gradients up to ~3.3 (ulp
    # 2.4e-7); 1e-5 is 20-40 ulps (measured <= 7.2e-7 with AMX / AVX2 / default kernels)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)
    assert (fast[args[3] == 0] == 0).all() and (fast[args[3] == 1] < 0).all()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=0)


def test_response_logprobs_of_one_token_response(tiny):
    model, tokenizer = tiny
    prompt_ids, prompt_mask, response_ids, action_mask = batch(tokenizer)
    args = (prompt_ids, prompt_mask, response_ids[:, :1], action_mask[:, :1])
    # as above: ~20 ulps of log-probs up to ~5
    torch.testing.assert_close(response_logprobs(model, *args), plain_response_logprobs(model, *args),
                               atol=1e-5, rtol=0)


def test_bf16_mixed_precision_is_close_to_fp32_with_fp32_gradients(tiny):
    """precision bf16: bf16 matmuls (lean path for Llama), fp32 parameters, gradients and log-probs."""
    model, tokenizer = tiny
    args = batch(tokenizer)
    ref = response_logprobs(model, *args)
    mixed = response_logprobs(model, *args, dtype=torch.bfloat16)
    assert mixed.dtype == torch.float32
    mask = args[3].bool()
    assert (mixed - ref)[mask].abs().max() < 0.05   # bf16 (eps 2^-7) on log-probs ~5; measured 4.8e-4
    assert (mixed[~mask] == 0).all()
    mixed.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_bf16_falls_back_to_autocast_for_other_architectures():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=20, n_embd=32, n_layer=1, n_head=2, n_positions=32)).eval()
    prompt_ids, prompt_mask = torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.long)
    response_ids, action_mask = torch.tensor([[4, 5]]), torch.ones(1, 2, dtype=torch.long)
    ref = response_logprobs(model, prompt_ids, prompt_mask, response_ids, action_mask)
    mixed = response_logprobs(model, prompt_ids, prompt_mask, response_ids, action_mask, dtype=torch.bfloat16)
    assert mixed.dtype == torch.float32 and not torch.equal(mixed, ref)   # it did run in bf16
    assert (mixed - ref).abs().max() < 0.05   # as above (measured 3.8e-4)
