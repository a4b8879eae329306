"""Token log-probs: hand-computed values, chunked == unchunked (values and gradients), entropy."""

from __future__ import annotations

import math

import pytest
import torch

from openk1.algo.logprobs import entropy_from_logits, token_logprobs

F64 = torch.float64


def test_hand_computed_logprobs() -> None:
    # logits [0, ln 2, ln 5] -> softmax [1, 2, 5] / 8 -> log(1/8), log(2/8), log(5/8)
    logits = torch.tensor([[[0.0, math.log(2), math.log(5)]] * 3], dtype=F64)  # [1, 3, 3]
    targets = torch.tensor([[0, 1, 2]])
    expected = torch.tensor([[math.log(1 / 8), math.log(2 / 8), math.log(5 / 8)]], dtype=F64)
    for chunk in (None, 1, 2):
        torch.testing.assert_close(
            token_logprobs(logits, targets, chunk_size=chunk), expected, atol=1e-6, rtol=0
        )
    # temperature 0.5 doubles the logits: [0, ln 4, ln 25] -> softmax [1, 4, 25] / 30
    got = token_logprobs(logits, targets, chunk_size=2, temperature=0.5)
    expected_t = torch.tensor([[math.log(1 / 30), math.log(4 / 30), math.log(25 / 30)]], dtype=F64)
    torch.testing.assert_close(got, expected_t, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk", [1, 3, 4, 7])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_equals_unchunked(dtype: torch.dtype, chunk: int, temperature: float) -> None:
    g = torch.Generator().manual_seed(chunk)
    b, t, v = 3, 10, 50  # chunk 3, 4, 7 leave a ragged last chunk
    logits = (4 * torch.randn(b, t, v, generator=g, dtype=dtype)).requires_grad_()
    targets = torch.randint(0, v, (b, t), generator=g)
    upstream = torch.randn(b, t, generator=g, dtype=dtype)  # a random d loss / d logp

    ref = token_logprobs(logits, targets, temperature=temperature)
    (grad_ref,) = torch.autograd.grad((ref * upstream).sum(), logits)
    out = token_logprobs(logits, targets, chunk_size=chunk, temperature=temperature)
    (grad,) = torch.autograd.grad((out * upstream).sum(), logits)

    # Both paths round z = logits / T and its logsumexp at ulp(max |z|) (z up to ~25 here):
    # 16 of those (measured <= 1.6 in fp32 and fp64, AMX / AVX2 / default kernels)
    value_tol = 16 * torch.finfo(dtype).eps * float(logits.detach().abs().max()) / temperature
    torch.testing.assert_close(out, ref, atol=value_tol, rtol=0)
    # the gradient, upstream * (onehot - exp(z - lse)) / T, carries that rounding of lse times
    # |upstream| / T (the two backward formulas round differently: exp(z - lse) vs softmax)
    grad_tol = value_tol * float(upstream.abs().max()) / temperature
    torch.testing.assert_close(grad, grad_ref, atol=grad_tol, rtol=0)
    # and both agree with log_softmax + gather
    direct = torch.log_softmax(logits.detach() / temperature, -1).gather(-1, targets[..., None])
    torch.testing.assert_close(out.detach(), direct.squeeze(-1), atol=value_tol, rtol=0)


def test_chunked_gradcheck() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 4, generator=g, dtype=F64, requires_grad=True)
    targets = torch.randint(0, 4, (2, 5), generator=g)
    assert torch.autograd.gradcheck(
        lambda x: token_logprobs(x, targets, chunk_size=2, temperature=0.8), (logits,)
    )


def test_bf16_logits_give_fp32_logprobs_and_bf16_grads() -> None:
    logits = torch.randn(2, 6, 11).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 11, (2, 6))
    out = token_logprobs(logits, targets, chunk_size=4)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16
    ref = token_logprobs(logits.detach().float(), targets)
    torch.testing.assert_close(out.detach(), ref, atol=1e-6, rtol=0)


def test_entropy_hand_computed_and_chunked() -> None:
    # uniform over 4 -> ln 4 = 1.386294; one-hot-ish [0, -inf, -inf] -> 0; [1, 2, 5] / 8 ->
    # -(1/8 ln 1/8 + 2/8 ln 2/8 + 5/8 ln 5/8) = 0.259930 + 0.346574 + 0.293752 = 0.900256
    inf = float("inf")
    logits = torch.tensor(
        [[[0.0, 0.0, 0.0, 0.0], [0.0, -inf, -inf, -inf], [0.0, math.log(2), math.log(5), -inf]]],
        dtype=F64,
    )
    expected = torch.tensor([[math.log(4), 0.0, 0.900256]], dtype=F64)
    for chunk in (None, 1, 2):
        got = entropy_from_logits(logits, chunk_size=chunk)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
