"""Token log-probabilities from logits, without a full fp32 log-softmax when asked.

    logp[b, t] = z[b, t, targets[b, t]] - logsumexp_v z[b, t, v],    z = logits / temperature

Shapes: logits [B, T, V] (any float dtype), targets [B, T] long -> logp [B, T] in at least fp32.
logits[:, t] must already be the scores FOR targets[:, t] (for a causal LM: logits of positions
P-1 .. P+T-2 for the response tokens at P .. P+T-1). Pass the sampling temperature so that logp
matches the rollout's log-probs.

With `chunk_size` the T dimension is processed in chunks by a custom autograd function that keeps
only the input logits for backward and recomputes the softmax chunk by chunk there, so the extra
memory is O(B * chunk_size * V) fp32 instead of O(B * T * V) (plus the gradient of the logits,
which any method must produce).
"""

from __future__ import annotations

from typing import Any

import torch


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # bf16/fp16 -> fp32, fp64 stays fp64


def _chunk_logp(z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """z [B, c, V] (compute dtype), targets [B, c] -> [B, c]."""
    return z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)


class _ChunkedTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, targets: torch.Tensor, chunk_size: int, temperature: float
    ) -> torch.Tensor:
        dtype = _compute_dtype(logits.dtype)
        out = torch.empty(targets.shape, dtype=dtype, device=logits.device)  # [B, T]
        for s in range(0, logits.shape[1], chunk_size):
            z = logits[:, s : s + chunk_size].to(dtype) / temperature  # [B, c, V]
            out[:, s : s + chunk_size] = _chunk_logp(z, targets[:, s : s + chunk_size])
        ctx.save_for_backward(logits, targets)
        ctx.chunk_size, ctx.temperature = chunk_size, temperature
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        logits, targets = ctx.saved_tensors
        chunk_size, temperature = ctx.chunk_size, ctx.temperature
        dtype = _compute_dtype(logits.dtype)
        grad = torch.empty_like(logits)  # [B, T, V]
        for s in range(0, logits.shape[1], chunk_size):
            sl = slice(s, s + chunk_size)
            z = logits[:, sl].to(dtype) / temperature  # [B, c, V]
            g = grad_out[:, sl].to(dtype).unsqueeze(-1)  # [B, c, 1]
            # d logp / d z = onehot(target) - softmax(z); then d z / d logits = 1 / temperature
            gz = torch.softmax(z, dim=-1).mul_(-g)
            gz.scatter_add_(-1, targets[:, sl].unsqueeze(-1), g)
            grad[:, sl] = (gz / temperature).to(logits.dtype)
        return grad, None, None, None


def token_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_size: int | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """logp [B, T] = log softmax(logits / temperature)[targets], differentiable w.r.t. logits.

    logits [B, T, V], targets [B, T] long. chunk_size=None computes it in one go with plain
    autograd (which keeps a full-size fp32 copy for backward); chunk_size=c bounds the fp32 working
    set to [B, c, V] in forward and backward. Both agree to rounding (tests: 1e-6).
    """
    if chunk_size is None or chunk_size >= logits.shape[1]:
        z = logits.to(_compute_dtype(logits.dtype)) / temperature
        return _chunk_logp(z, targets)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    apply = _ChunkedTokenLogprobs.apply
    # torch.autograd.Function.apply is unannotated
    out: torch.Tensor = apply(logits, targets, chunk_size, temperature)  # type: ignore[no-untyped-call]
    return out


@torch.no_grad()
def entropy_from_logits(
    logits: torch.Tensor, *, chunk_size: int | None = None, temperature: float = 1.0
) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) per position -> [B, T] (a metric; no grad).

    H = logsumexp(z) - sum_v softmax(z)_v z_v. Mask it with action_mask before averaging.
    """
    dtype = _compute_dtype(logits.dtype)
    step = chunk_size or logits.shape[1]
    out = torch.empty(logits.shape[:-1], dtype=dtype, device=logits.device)
    for s in range(0, logits.shape[1], step):
        z = logits[:, s : s + step].to(dtype) / temperature  # [B, c, V]
        p = torch.softmax(z, dim=-1)
        pz = torch.where(p > 0, p * z, 0.0)  # 0 * -inf (a masked-out token) counts as 0
        out[:, s : s + step] = torch.logsumexp(z, dim=-1) - pz.sum(-1)
    return out
