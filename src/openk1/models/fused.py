"""Autograd functions of the lean forward that keep less for backward and recompute the rest.

Plain autograd keeps every intermediate an op needs: RMSNorm keeps its fp32 input AND its
normalised output, the SwiGLU MLP keeps gate, up, silu(gate) and silu(gate) * up. At the
micro-batches of an RL update these saved activations are most of the peak memory, so:

  rms_norm_to(x, w, eps, dtype)      saves x and rstd [.., 1]; returns (x * rstd * w) in `dtype`
  swiglu_down(gate, up, w_down)      saves gate and up only; silu(gate) * up is recomputed in backward

Both return what the plain ops return, and their gradients equal autograd's (tests/models/
test_fused.py, gradcheck in fp64).

    rms_norm:  y = x * r * w,  r = (mean(x^2) + eps)^-1/2
               dx = r * (g w - x_hat * mean(g w x_hat)),  x_hat = x r;   dw = sum(g x_hat)
    swiglu:    a = silu(p) * u,  out = a W^T
               da = dout W,  dW = dout^T a,  du = da silu(p),  dp = da u silu'(p)
               silu'(p) = s (1 + p (1 - s)),  s = sigmoid(p)   (aten's silu_backward)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class _RMSNormTo(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)           # [..., 1]
        ctx.save_for_backward(x, weight, rstd)
        return (x * rstd * weight).to(dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        x, weight, rstd = ctx.saved_tensors
        x_hat = x * rstd                                                    # [..., d]
        gw = grad.to(x.dtype) * weight
        grad_x = rstd * (gw - x_hat * (gw * x_hat).mean(-1, keepdim=True))
        grad_w = (grad.to(x.dtype) * x_hat).reshape(-1, x.shape[-1]).sum(0)
        return grad_x, grad_w.to(weight.dtype), None, None


def rms_norm_to(x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """RMSNorm over the last dim (x [..., d], weight [d]) in x's dtype, cast to `dtype`.

    Under torch.compile the plain ops are traced instead: inductor's partitioner already
    chooses what to recompute."""
    if torch.compiler.is_compiling():
        return F.rms_norm(x, x.shape[-1:], weight, eps).to(dtype)
    out: torch.Tensor = _RMSNormTo.apply(x, weight, eps, dtype)  # type: ignore[no-untyped-call]
    return out


class _SwiGLUDown(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up, w_down)
        return F.linear(F.silu(gate) * up, w_down)                         # [..., d]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gate, up, w_down = ctx.saved_tensors
        silu = F.silu(gate)
        a = silu * up                                                       # recomputed [..., I]
        grad_w = grad.reshape(-1, grad.shape[-1]).t() @ a.reshape(-1, a.shape[-1])   # [d, I]
        grad_a = grad @ w_down                                              # [..., I]
        grad_gate = torch.ops.aten.silu_backward(grad_a * up, gate)        # da u silu'(p)
        return grad_gate, grad_a * silu, grad_w


def swiglu_down(gate: torch.Tensor, up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """down(silu(gate) * up): gate/up [..., I], w_down [d, I] -> [..., d] (plain ops under
    torch.compile, as rms_norm_to)."""
    if torch.compiler.is_compiling():
        return F.linear(F.silu(gate) * up, w_down)
    out: torch.Tensor = _SwiGLUDown.apply(gate, up, w_down)  # type: ignore[no-untyped-call]
    return out
