"""models/fused.py: the memory-saving autograd functions equal plain autograd (gradcheck, fp64)."""

import torch
import torch.nn.functional as F

from openk1.models.fused import rms_norm_to, swiglu_down


def test_rms_norm_to_matches_the_formula_and_gradcheck():
    x = torch.tensor([[3.0, 4.0]], dtype=torch.float64)            # mean(x^2) = 12.5
    w = torch.tensor([1.0, 2.0], dtype=torch.float64)
    y = rms_norm_to(x, w, 0.0, torch.float64)
    r = 12.5 ** -0.5
    assert torch.allclose(y, torch.tensor([[3 * r, 8 * r]], dtype=torch.float64), atol=1e-12)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rms_norm_to(a, b, 1e-6, torch.float64), (x, w))
    assert torch.allclose(rms_norm_to(x, w, 1e-6, torch.float64), F.rms_norm(x, (5,), w, 1e-6), atol=1e-12)


def test_rms_norm_to_casts_and_keeps_gradients_in_the_input_dtype():
    x = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(8, requires_grad=True)
    y = rms_norm_to(x, w, 1e-6, torch.bfloat16)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and w.grad.dtype == torch.float32


def test_swiglu_down_equals_plain_ops_and_gradcheck():
    g = torch.Generator().manual_seed(1)
    gate = torch.randn(2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)    # I = 4
    up = torch.randn(2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w_down = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)     # d = 5
    plain = F.linear(F.silu(gate) * up, w_down)
    assert torch.allclose(swiglu_down(gate, up, w_down), plain, atol=1e-12)
    assert torch.autograd.gradcheck(swiglu_down, (gate, up, w_down))
    # by hand, one element: p = 0 -> silu 0, silu'(0) = 1/2
    p0 = torch.tensor([[0.0]], dtype=torch.float64, requires_grad=True)
    u0 = torch.tensor([[2.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[3.0]], dtype=torch.float64, requires_grad=True)
    swiglu_down(p0, u0, w).sum().backward()
    assert p0.grad.tolist() == [[3.0 * 2.0 * 0.5]] and u0.grad.tolist() == [[0.0]] and w.grad.tolist() == [[0.0]]
