"""Length penalty (report §2.3.3): the report's example, edge cases, list == tensor, warm-up."""

from __future__ import annotations

import doctest
import random

import pytest
import torch

import openk1.rewards.length as length_module
from openk1.rewards.length import length_penalty_weight, length_reward, length_rewards


def test_report_example() -> None:
    # min 1000, max 5000, span 4000: lambda = 0.5 - [0, 1000, 2000, 4000] / 4000
    #   = [0.5, 0.25, 0.0, -0.5]; the wrong one (3rd) gets min(0, 0.0) = 0.0
    got = length_reward([1000, 2000, 3000, 5000], [True, True, False, True])
    assert got == pytest.approx([0.5, 0.25, 0.0, -0.5], abs=1e-6)


def test_all_same_length_gives_zero() -> None:
    assert length_reward([42, 42, 42], [True, False, True]) == [0.0, 0.0, 0.0]
    assert length_reward([], []) == []


def test_wrong_answers_never_gain() -> None:
    # lengths [10, 20, 30]: lambda = [0.5, 0.0, -0.5]
    # correct: [0.5, 0.0, -0.5]; wrong: [min(0, 0.5), min(0, 0), min(0, -0.5)] = [0, 0, -0.5]
    assert length_reward([10, 20, 30], [True] * 3) == pytest.approx([0.5, 0.0, -0.5], abs=1e-6)
    assert length_reward([10, 20, 30], [False] * 3) == pytest.approx([0.0, 0.0, -0.5], abs=1e-6)
    # lengths [10, 14, 30]: lambda_2 = 0.5 - 4/20 = 0.3 -> 0.3 if correct, 0 if wrong
    assert length_reward([10, 14, 30], [False, False, True])[1] == 0.0
    assert length_reward([10, 14, 30], [False, True, True])[1] == pytest.approx(0.3, abs=1e-6)
    with pytest.raises(ValueError):
        length_reward([1, 2], [True])


def test_tensor_version_hand_computed() -> None:
    # report example as group 9, interleaved with group 4 (lengths 7, 7 -> all 0) and group 1:
    # lengths 10, 30 -> lambda [0.5, -0.5]; wrong short one -> min(0, 0.5) = 0, correct long -0.5
    lengths = torch.tensor([1000, 7, 2000, 10, 3000, 7, 30, 5000])
    correct = torch.tensor([True, True, True, False, False, False, True, True])
    groups = torch.tensor([9, 4, 9, 1, 9, 4, 1, 9])
    expected = torch.tensor([0.5, 0.0, 0.25, 0.0, 0.0, 0.0, -0.5, -0.5])
    torch.testing.assert_close(
        length_rewards(lengths, correct, groups), expected, atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("seed", range(5))
def test_tensor_version_equals_list_version(seed: int) -> None:
    rng = random.Random(seed)
    groups = [g for g in range(6) for _ in range(rng.randint(1, 5))]
    rng.shuffle(groups)  # rows of a group are not contiguous
    lengths = [rng.choice([3, 50, 200, 1024, rng.randint(1, 4096)]) for _ in groups]
    correct = [rng.random() < 0.5 for _ in groups]
    got = length_rewards(torch.tensor(lengths), torch.tensor(correct), torch.tensor(groups))
    expected = [0.0] * len(groups)
    for g in set(groups):
        rows = [i for i, gi in enumerate(groups) if gi == g]
        rewards = length_reward([lengths[i] for i in rows], [correct[i] for i in rows])
        for i, r in zip(rows, rewards, strict=True):
            expected[i] = r
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-6, rtol=0)


def test_warmup_schedule() -> None:
    # warm-up 3 iterations (0, 1, 2) of plain RL, then the constant weight
    assert [length_penalty_weight(i, 0.2, 3) for i in range(6)] == [0.0, 0.0, 0.0, 0.2, 0.2, 0.2]
    assert length_penalty_weight(0, 0.2, 0) == 0.2  # no warm-up
    assert length_penalty_weight(10, 0.0, 3) == 0.0  # penalty off


def test_docstring_examples() -> None:
    result = doctest.testmod(length_module)
    assert result.attempted >= 3 and result.failed == 0
