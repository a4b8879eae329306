"""Row surgery on a Hugging Face DynamicCache, for continuous batching.

Each layer keeps keys and values [B, H, L, D]. Every row is laid out as the attention mask
[B, L] says: left padding (mask 0, zero keys), then the row's real tokens, all ending at the
last column. Rows can therefore be dropped (select), stacked with rows prefilled later (join:
the shorter side is left-padded) and leading all-padding columns cut (drop_left); position ids
come from the mask (models/forward.py), so none of this changes any row's attention.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

from openk1.errors import OpenK1Error


def supports_surgery(cache: Any) -> bool:
    """Whether rows can be dropped and joined: every layer a full-attention DynamicLayer (what
    models/forward.py `full_cache` gives any model that takes a DynamicCache)."""
    layers = list(getattr(cache, "layers", []))
    return bool(layers) and all(isinstance(x, DynamicLayer) and not x.is_sliding for x in layers)


def _layers(cache: Any) -> list[Any]:
    if not supports_surgery(cache):
        raise OpenK1Error(f"{type(cache).__name__}: rows of this KV cache cannot be dropped or joined "
                          "(the rollout engine decodes such models in whole batches)")
    return list(cache.layers)


def select(cache: Any, rows: torch.Tensor) -> Any:
    """Keep `rows` (indices [b]) of every layer, in that order."""
    for layer in _layers(cache):
        layer.keys, layer.values = layer.keys[rows], layer.values[rows]
    return cache


def drop_left(cache: Any, columns: int) -> Any:
    """Cut the first `columns` positions of every layer (padding in every row)."""
    if columns:
        for layer in _layers(cache):
            layer.keys, layer.values = layer.keys[:, :, columns:], layer.values[:, :, columns:]
    return cache


def left_pad(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Zero-pad x on the left of dimension `dim` up to `width` positions."""
    missing = width - x.shape[dim]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def join(cache: Any, other: Any) -> Any:
    """Rows of `cache` then rows of `other`, both left-padded to the longer length (into `cache`)."""
    for a, b in zip(_layers(cache), _layers(other), strict=True):
        width = max(a.keys.shape[2], b.keys.shape[2])
        a.keys = torch.cat([left_pad(a.keys, width, 2), left_pad(b.keys, width, 2)])
        a.values = torch.cat([left_pad(a.values, width, 2), left_pad(b.values, width, 2)])
    return cache
