"""Autograd functions of the lean forward that keep less for backward and recompute the rest.

Plain autograd keeps every intermediate an op needs: RMSNorm keeps its fp32 input AND its
normalised output, the SwiGLU MLP keeps gate, up, silu(gate) and silu(gate) * up. At the
micro-batches of an RL update these saved activations are most of the peak memory, so:

  rms_norm_to(x, w, eps, dtype)      saves x and rstd [.., 1]; returns (x * rstd * w) in `dtype`
  swiglu_down(gate, up, w_down)      saves gate and up only; silu(gate) * up is recomputed in backward
  rotate(x, rot)                     RoPE as one complex multiply per pass (saves nothing big)

They return what the plain ops return, and their gradients equal autograd's (tests/models/
test_fused.py, gradcheck in fp64). On a CPU the elementwise passes between the matmuls are
memory-bound, so each function also does fewer passes than autograd's decomposition:

    rms_norm:  y = x * r * w,  r = (mean(x^2) + eps)^-1/2
               dx = r g w - x (r^3 / d) sum_j(g w x),  dw = sum_rows(g x r)
               both sums are matrix-vector products of one product g x [N, d] (2 passes in
               all where autograd's backward makes about 10)
    rotate:    pairs (x_2j, x_2j+1) as complex z_j, rot_j = cos + i sin: y = z rot, dz = g conj(rot)
               (HF's rotate-half pairs (j, j + D/2) become adjacent by permuting q/k weight rows:
               models/lean.py `_interleave`); fp32 2.6 ms vs 14.7 ms forward + backward for
               [64, 143, 8, 32], bf16 5.8 vs 11.2 ms
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
        y: torch.Tensor
        rstd: torch.Tensor
        if hasattr(torch.ops.aten, "_fused_rms_norm"):   # one pass; returns rstd too (torch >= 2.8)
            y, rstd = torch.ops.aten._fused_rms_norm(x, [x.shape[-1]], weight, eps)
        else:
            rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)       # [..., 1]
            y = x * rstd * weight
        ctx.save_for_backward(x, weight, rstd)
        return y.to(dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        x, weight, rstd = ctx.saved_tensors
        d = x.shape[-1]
        g = grad.to(x.dtype)                                                # [..., d]
        gx = (g * x).reshape(-1, d)                                         # [N, d]
        grad_w = rstd.reshape(-1) @ gx                                      # [d]: sum_rows(g x r)
        dot = (gx @ weight.to(x.dtype)).reshape(rstd.shape)                 # [..., 1]: sum_j(g w x)
        grad_x = g * weight
        grad_x.mul_(rstd).addcmul_(x, dot * rstd.pow(3), value=-1.0 / d)
        return grad_x, grad_w.to(weight.dtype), None, None


def rms_norm_to(x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """RMSNorm over the last dim (x [..., d], weight [d]) in x's dtype, cast to `dtype`.

    Under torch.compile the plain ops are traced instead (inductor's partitioner already
    chooses what to recompute), and without autograd (decoding) F.rms_norm runs alone."""
    if torch.compiler.is_compiling() or not _tracked(x, weight):
        return F.rms_norm(x, x.shape[-1:], weight, eps).to(dtype)   # no autograd node (decoding)
    out: torch.Tensor = _RMSNormTo.apply(x, weight, eps, dtype)  # type: ignore[no-untyped-call]  # unannotated in torch
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
    out: torch.Tensor = _SwiGLUDown.apply(gate, up, w_down)  # type: ignore[no-untyped-call]  # unannotated in torch
    return out


class _Rotate(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rot)
        return _complex_multiply(x, rot)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (rot,) = ctx.saved_tensors
        return _complex_multiply(grad, rot, conjugate=True), None


def _complex_multiply(x: torch.Tensor, rot: torch.Tensor, conjugate: bool = False) -> torch.Tensor:
    """x [..., D] as D/2 complex pairs times rot [..., D/2, 2] (cos, sin; broadcast), or times its
    conjugate, in fp32 (fp64 for fp64 x), returned in x's dtype."""
    real = torch.promote_types(x.dtype, torch.float32)
    z = torch.view_as_complex(x.to(real).contiguous().unflatten(-1, (-1, 2)))
    r = torch.view_as_complex(rot.to(real).contiguous())
    return torch.view_as_real(z * (r.conj() if conjugate else r)).flatten(-2).to(x.dtype)


def rotate(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """RoPE on interleaved pairs: x [B, n, heads, D] (pairs (2j, 2j + 1)), rot [B, n, 1, D/2, 2]
    (cos, sin of each pair, fp32) -> x rotated, in x's dtype. Under torch.compile, real
    arithmetic (inductor fuses it; it does not generate complex kernels)."""
    if torch.compiler.is_compiling():
        a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)                 # [..., D/2] each
        cos, sin = rot.unbind(-1)
        return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2).to(x.dtype)
    if not _tracked(x):   # decoding: no autograd node to build
        return _complex_multiply(x, rot)
    out: torch.Tensor = _Rotate.apply(x, rot)  # type: ignore[no-untyped-call]  # unannotated in torch
    return out


def _tracked(*tensors: torch.Tensor) -> bool:
    """Whether autograd records an op on these tensors."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
