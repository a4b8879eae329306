"""The RL update's micro-batching: length-sorted micro-batches give the one-pass step exactly."""

from __future__ import annotations

import torch

from openk1.loop import Loop
from openk1.optim import OptimConfig
from openk1.rollout.hf import HFEngine, SamplingConfig
from openk1.stages import rl
from openk1.types import Rollout


def step_deltas(model, rollout, advantages, index, micro_batch_size):
    """Parameter change of one SGD(lr=1) step, no clipping: minus the gradient."""
    cfg = rl.RLConfig(micro_batch_size=micro_batch_size, tau=0.5, optim=OptimConfig(grad_clip=0.0))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    stats = rl.minibatch_step(Loop(None, model, optimizer, 0.0, 1), rollout, advantages, index, cfg, 1.0)
    deltas = [p.detach() - b for p, b in zip(model.parameters(), before)]
    with torch.no_grad():
        for p, b in zip(model.parameters(), before):
            p.copy_(b)
    return deltas, stats


def test_sorted_micro_batches_equal_one_pass(tiny):
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=12))
    full = engine.generate(["12+3=", "7+845=", "1+1="], 3, seed=0)
    lengths = torch.tensor([12, 3, 7, 1, 9, 5, 12, 2, 6])   # cut: responses of different lengths
    mask = (torch.arange(12)[None] < lengths[:, None]).long()
    rollout = Rollout(full.prompt_ids, full.prompt_mask, full.response_ids.masked_fill(mask == 0, 0),
                      mask, full.logp * mask, full.stop_reason)
    advantages = torch.linspace(-1.0, 1.0, 9)
    index = torch.tensor([4, 0, 8, 2, 6, 1])
    one, stats_one = step_deltas(model, rollout, advantages, index, micro_batch_size=64)
    split, stats_split = step_deltas(model, rollout, advantages, index, micro_batch_size=2)
    assert sum(float(d.abs().sum()) for d in one) > 1e-3
    # the same fp32 sums in another order: deltas (-gradients) up to ~1.1 within 1e-5 (~80 eps of
    # it; measured <= 6.7e-7), the loss (~4.4) within ~20 eps of it (measured <= 2.4e-7), with
    # AMX / AVX2 / default kernels
    for a, b in zip(one, split):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert abs(stats_one["loss"] - stats_split["loss"]) < 1e-5
    # metrics are means over the whole mini-batch, not the last micro-batch's
    assert abs(stats_one["opmd/pg_term_seq"] - stats_split["opmd/pg_term_seq"]) < 1e-5


def test_by_length_groups_similar_lengths():
    # response lengths 3, 1, 2, 1 and prompt lengths 2, 2, 1, 1
    action_mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0]])
    prompt_mask = torch.tensor([[1, 1], [1, 1], [0, 1], [0, 1]])
    r = Rollout(torch.zeros(4, 2, dtype=torch.long), prompt_mask, torch.zeros(4, 3, dtype=torch.long),
                action_mask, torch.zeros(4, 3), [""] * 4)
    # keys = response length * 3 + prompt length: 11, 5, 7, 4
    assert rl.by_length(torch.tensor([0, 1, 2, 3]), r).tolist() == [3, 1, 2, 0]
    assert rl.by_length(torch.tensor([2, 0]), r).tolist() == [2, 0]
