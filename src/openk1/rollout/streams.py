"""Per-sequence random streams: the uniform behind token t of a sequence is a pure function of
its key (seed, sequence number) and t.

A counter-based generator in the spirit of Random123/Philox: murmur3's 32-bit finaliser
(fmix32) folded over the key words and the counter. Why not one torch.Generator per call: the
tokens of a sequence must not depend on which other sequences share its batch, on its slot
(continuous batching) or on whether it was generated in one call or continued from a saved
prefix in a later iteration (partial rollouts). Here they depend on its key, its position and
its logits only; one vectorised hash per decoding step serves the whole batch.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9     # 2^32 / phi: keeps fmix32's fixed point 0 out of the way


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for 0 <= x, c < 2^32, in int64 with no overflow (16-bit halves)."""
    low, high = x & 0xFFFF, x >> 16
    return (low * c + (((high * c) & 0xFFFF) << 16)) & MASK32


def fmix32(h: torch.Tensor) -> torch.Tensor:
    """murmur3's finaliser: a bijection of 32-bit words with full avalanche (int64 tensors)."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def counter_uniform(*keys: torch.Tensor) -> torch.Tensor:
    """[B] float64 uniforms in [0, 1) from int64 key columns [B] each (seed, sequence, position).

    Each key contributes its low and high 32-bit words. Resolution 2^-32.

    >>> u = counter_uniform(torch.tensor([7, 7]), torch.tensor([0, 1]), torch.tensor([3, 3]))
    >>> bool(u[0] != u[1]), bool(((0 <= u) & (u < 1)).all())
    (True, True)
    """
    return _unit(fold(*keys))


def fold(*keys: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
    """The hash state [B] after folding in `keys`, from `state` (default: the start state).

    counter_uniform(a, b, c) == fmix32(fold(c, state=fold(a, b))) / 2^32: a decoder folds each
    sequence's (seed, sequence number) once and only the position at every step."""
    h = torch.full_like(keys[0], GOLDEN) if state is None else state
    for key in keys:
        for word in (key & MASK32, (key >> 32) & MASK32):
            h = fmix32(h ^ fmix32((word + GOLDEN) & MASK32))
    return h


def uniform_at(state: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """counter_uniform(seed, sequence, position) from state = fold(seed, sequence) [B]."""
    return _unit(fold(position, state=state))


def _unit(h: torch.Tensor) -> torch.Tensor:
    """The final mix of a hash state [B], as float64 uniforms in [0, 1) (resolution 2^-32)."""
    return fmix32(h).double() / 2.0**32
