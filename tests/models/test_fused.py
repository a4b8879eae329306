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


def test_rotate_by_hand_and_gradcheck():
    from openk1.models.fused import rotate

    # one pair (1, 2) rotated by 90 degrees -> (-2, 1); a second pair (3, 4) by 0 -> unchanged
    x = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]], dtype=torch.float64)          # [B, n, heads, D]
    rot = torch.tensor([[[[[0.0, 1.0], [1.0, 0.0]]]]], dtype=torch.float64)     # [B, n, 1, D/2, 2]
    assert rotate(x, rot).tolist() == [[[[-2.0, 1.0, 3.0, 4.0]]]]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    angle = torch.randn(2, 3, 1, 3, dtype=torch.float64, generator=g)
    rot = torch.stack([angle.cos(), angle.sin()], dim=-1)
    assert torch.autograd.gradcheck(lambda a: rotate(a, rot), (x,))
    y = rotate(x.to(torch.bfloat16), rot.float())                              # bf16 in, bf16 out
    assert y.dtype == torch.bfloat16


def test_rotate_on_interleaved_rows_equals_hf_rotate_half():
    from openk1.models.fused import rotate
    from openk1.models.lean import _interleave

    assert _interleave(torch.arange(8.0), 4).tolist() == [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
    g = torch.Generator().manual_seed(3)
    w = torch.randn(2 * 8, 5, dtype=torch.float64, generator=g)                # 2 heads of D = 8, d = 5
    h = torch.randn(3, 7, 5, dtype=torch.float64, generator=g)                 # [B, n, d]
    angle = torch.randn(3, 7, 1, 4, dtype=torch.float64, generator=g)
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)   # HF's layout
    x = (h @ w.t()).view(3, 7, 2, 8)
    first, second = x.chunk(2, dim=-1)
    hf = x * cos + torch.cat([-second, first], dim=-1) * sin                   # HF's rotate-half
    ours = rotate((h @ _interleave(w, 8).t()).view(3, 7, 2, 8), torch.stack([angle.cos(), angle.sin()], -1))
    assert torch.allclose(_interleave(hf.reshape(3, 7, 16).transpose(0, 2), 8).transpose(0, 2),
                          ours.reshape(3, 7, 16), atol=1e-12)
    # q.k is unchanged by the common permutation
    assert torch.allclose(hf @ hf.transpose(-1, -2), ours @ ours.transpose(-1, -2), atol=1e-12)
