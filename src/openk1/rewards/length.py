"""Length penalty (k1.5 report §2.3.3): among the k samples of one prompt, reward
short correct answers and penalise long ones; a wrong answer can only lose.

    lambda_i = 0.5 - (len_i - min_len) / (max_len - min_len)        in [-0.5, 0.5]
    len_reward_i = lambda_i            if answer i is correct
                 = min(0, lambda_i)    if it is wrong
    (all 0 when max_len == min_len)

It is added to the task reward with a weight (`length_penalty_weight`): plain RL during a
warm-up, then a constant weight for the rest of training. len_i counts the tokens of the chain of
thought and the answer (the whole response).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def length_reward(lengths: Sequence[int], correct: Sequence[bool]) -> list[float]:
    """Length rewards of the k samples of ONE prompt.

    >>> length_reward([1000, 2000, 3000, 5000], [True, True, False, True])
    [0.5, 0.25, 0.0, -0.5]
    >>> length_reward([7, 7], [True, False])
    [0.0, 0.0]
    """
    if len(lengths) != len(correct):
        raise ValueError(f"{len(lengths)} lengths but {len(correct)} correctness flags")
    if not lengths:
        return []
    min_len, max_len = min(lengths), max(lengths)
    if max_len == min_len:
        return [0.0] * len(lengths)
    rewards = []
    for n, ok in zip(lengths, correct, strict=True):
        lam = 0.5 - (n - min_len) / (max_len - min_len)
        rewards.append(lam if ok else min(0.0, lam))
    return rewards


def length_rewards(
    lengths: torch.Tensor, correct: torch.Tensor, group_ids: torch.Tensor
) -> torch.Tensor:
    """`length_reward` applied to every prompt group of a flat batch -> [B] float.

    lengths [B] (ints or floats), correct [B] bool, group_ids [B] (which prompt each sequence
    belongs to; any integer labels, rows of a group need not be contiguous).
    """
    x = lengths.to(torch.float64)  # exact for any realistic token count
    _, index = torch.unique(group_ids, return_inverse=True)
    num_groups = int(index.max()) + 1 if index.numel() else 0
    lo = torch.full((num_groups,), math.inf, dtype=x.dtype, device=x.device)
    hi = torch.full((num_groups,), -math.inf, dtype=x.dtype, device=x.device)
    lo = lo.scatter_reduce(0, index, x, reduce="amin")[index]  # [B] min_len of the group
    hi = hi.scatter_reduce(0, index, x, reduce="amax")[index]  # [B] max_len of the group
    span = hi - lo
    lam = 0.5 - (x - lo) / torch.where(span > 0, span, 1.0)
    lam = torch.where(span > 0, lam, 0.0)
    reward = torch.where(correct.bool(), lam, lam.clamp(max=0.0))
    return reward.to(torch.get_default_dtype())


def length_penalty_weight(iteration: int, weight: float, warmup_iterations: int) -> float:
    """Weight of the length reward at RL iteration `iteration` (counted from 0).

    0 for the first `warmup_iterations` iterations (0 .. warmup_iterations-1), `weight` after.

    >>> [length_penalty_weight(i, 0.1, 2) for i in range(4)]
    [0.0, 0.0, 0.1, 0.1]
    """
    return 0.0 if iteration < warmup_iterations else float(weight)
