"""Pad token-id lists into a batch: the one place that builds [B, L] ids + mask.

A leaf of the package (torch only), beside types.py: models/, data/, rollout/, rewards/ and
curate/ all pad, and none of them has to import another layer to do it."""

from __future__ import annotations

from typing import Literal

import torch


def pad(seqs: list[list[int]], pad_id: int,
        side: Literal["left", "right"] = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, L] and mask [B, L] (1 on real tokens), L = the longest sequence.

    >>> pad([[5, 6, 7], [8]], 0, "left")[0].tolist()
    [[5, 6, 7], [0, 0, 8]]
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long, device="cpu")
    mask = torch.zeros((len(seqs), width), dtype=torch.long, device="cpu")
    for row, seq in enumerate(seqs):
        cols = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, cols] = torch.tensor(seq, dtype=torch.long, device="cpu")
        mask[row, cols] = 1
    return ids, mask
