"""DPO loss: hand-computed values, gradients, micro-batch additivity, the SFT term, stability."""

from __future__ import annotations

import math

import pytest
import torch

from openk1.algo.dpo import dpo_loss

F64 = torch.float64

# Two pairs, beta = 0.5.
#   pair 1: l_w = -2, l_ref_w = -3, l_l = -4, l_ref_l = -2
#           reward_chosen = 0.5 * (-2 + 3) = 0.5, reward_rejected = 0.5 * (-4 + 2) = -1.0
#           h = 0.5 - (-1.0) = 1.5;  -log sigmoid(1.5) = log(1 + e^-1.5) = log(1.223130) = 0.201413
#   pair 2: l_w = -5, l_ref_w = -4, l_l = -1, l_ref_l = -2
#           reward_chosen = 0.5 * (-1) = -0.5, reward_rejected = 0.5 * (1) = 0.5
#           h = -1.0;  -log sigmoid(-1) = log(1 + e^1) = log(3.718282) = 1.313262
#   loss = (0.201413 + 1.313262) / 2 = 0.757337
CHOSEN = torch.tensor([-2.0, -5.0], dtype=F64)
REJECTED = torch.tensor([-4.0, -1.0], dtype=F64)
REF_CHOSEN = torch.tensor([-3.0, -4.0], dtype=F64)
REF_REJECTED = torch.tensor([-2.0, -2.0], dtype=F64)


def test_dpo_loss_hand_computed() -> None:
    loss, metrics = dpo_loss(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.5)
    assert float(loss) == pytest.approx(0.757337, abs=1e-6)
    assert float(metrics["reward/chosen"]) == pytest.approx(0.0, abs=1e-9)       # (0.5 - 0.5) / 2
    assert float(metrics["reward/rejected"]) == pytest.approx(-0.25, abs=1e-9)   # (-1 + 0.5) / 2
    assert float(metrics["reward/margin"]) == pytest.approx(0.25, abs=1e-9)      # (1.5 - 1) / 2
    assert float(metrics["reward/accuracy"]) == 0.5                              # only h_1 > 0


def test_dpo_gradient_hand_computed() -> None:
    # d loss / d l_w,i = -beta * sigmoid(-h_i) / N,  d loss / d l_l,i = +beta * sigmoid(-h_i) / N
    #   pair 1: sigmoid(-1.5) = 0.182426 -> 0.5 * 0.182426 / 2 = 0.045606
    #   pair 2: sigmoid(1.0)  = 0.731059 -> 0.5 * 0.731059 / 2 = 0.182765
    chosen, rejected = CHOSEN.clone().requires_grad_(), REJECTED.clone().requires_grad_()
    loss, _ = dpo_loss(chosen, rejected, REF_CHOSEN, REF_REJECTED, beta=0.5)
    loss.backward()
    torch.testing.assert_close(chosen.grad, torch.tensor([-0.045606, -0.182765], dtype=F64),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(rejected.grad, torch.tensor([0.045606, 0.182765], dtype=F64),
                               atol=1e-6, rtol=0)


def test_policy_equal_to_reference_gives_log_2() -> None:
    # h = 0 for every pair -> loss = -log sigmoid(0) = log 2 = 0.693147, accuracy 0 (h > 0 strict)
    loss, metrics = dpo_loss(CHOSEN, REJECTED, CHOSEN, REJECTED, beta=0.1)
    assert float(loss) == pytest.approx(math.log(2), abs=1e-9)
    assert float(metrics["reward/accuracy"]) == 0.0


def test_micro_batches_add_up_to_the_batch_loss() -> None:
    # Each half called with the batch's N = 2: 0.201413 / 2 + 1.313262 / 2 = 0.757337
    full, _ = dpo_loss(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.5)
    parts = [dpo_loss(CHOSEN[i:i + 1], REJECTED[i:i + 1], REF_CHOSEN[i:i + 1], REF_REJECTED[i:i + 1],
                      beta=0.5, normaliser=2.0)[0] for i in range(2)]
    assert float(parts[0]) == pytest.approx(0.201413 / 2, abs=1e-6)
    assert float(sum(parts)) == pytest.approx(float(full), abs=1e-12)


def test_nll_term_on_chosen() -> None:
    # chosen tokens [4, 5]: per-token NLL = [2/4, 5/5] = [0.5, 1.0]; weight 0.1:
    # loss = 0.757337 + 0.1 * (0.5 + 1.0) / 2 = 0.757337 + 0.075 = 0.832337
    loss, metrics = dpo_loss(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.5,
                             chosen_tokens=torch.tensor([4, 5]), nll_weight=0.1)
    assert float(loss) == pytest.approx(0.832337, abs=1e-6)
    assert float(metrics["nll/chosen"]) == pytest.approx(0.75, abs=1e-9)
    # a micro-batch of pair 2 alone, N = 2: 1.313262 / 2 + 0.1 * 1.0 / 2 = 0.656631 + 0.05 = 0.706631
    part, _ = dpo_loss(CHOSEN[1:], REJECTED[1:], REF_CHOSEN[1:], REF_REJECTED[1:], beta=0.5,
                       normaliser=2.0, chosen_tokens=torch.tensor([5]), nll_weight=0.1)
    assert float(part) == pytest.approx(0.706631, abs=1e-6)
    with pytest.raises(ValueError, match="chosen_tokens"):
        dpo_loss(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.5, nll_weight=0.1)


def test_large_margins_are_finite() -> None:
    # beta = 1: h = (-50) - (+50) = -100 -> loss = log(1 + e^100) = 100 + log(1 + e^-100) = 100.0
    #           h = +100 -> loss = log(1 + e^-100) = 3.7e-44
    zero = torch.zeros(1, dtype=F64)
    lose, _ = dpo_loss(zero - 50, zero + 50, zero, zero, beta=1.0)
    win, _ = dpo_loss(zero + 50, zero - 50, zero, zero, beta=1.0)
    assert float(lose) == pytest.approx(100.0, abs=1e-9)
    assert 0.0 <= float(win) < 1e-40
