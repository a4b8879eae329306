"""A mini-batch with no signal moves no weight (issue 17): all advantages exactly 0 and no step
taken yet in the iteration -> no forward, no optimizer step; counted in update/skipped_no_signal."""

from __future__ import annotations

import math

import pytest
import torch

from openk1.distributed import runtime
from openk1.loop import Loop
from openk1.models.io import load_model
from openk1.optim import OptimConfig, make_optimizer
from openk1.report.run_dir import read_metrics
from openk1.rollout.hf import HFEngine, SamplingConfig
from openk1.stages import rl

from .test_rl import config


@pytest.mark.parametrize("reset_optimizer", [True, False], ids=["reset", "kept-optimizer"])
def test_all_wrong_run_leaves_the_weights_bit_identical(tmp_path, tiny_model_dir, reset_optimizer):
    # a random model is never right; no length penalty: every group is flat, every advantage 0
    rl.run(config(tmp_path, tiny_model_dir, tmp_path / "run", iterations=2, length_penalty_weight=0.0,
                  eval_data="", reset_optimizer=reset_optimizer))
    start = load_model(tiny_model_dir)[0].state_dict()
    final = load_model(tmp_path / "run" / "model")[0].state_dict()
    assert final.keys() == start.keys()
    moved = [name for name in start if not torch.equal(final[name], start[name])]
    assert not moved, f"{len(moved)} tensors moved, e.g. {moved[0]}: " \
        f"{float((final[moved[0]] - start[moved[0]]).abs().max()):.1e}"
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "reward/mean" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["reward/mean"] == 0.0 and r["adv/flat_group_frac"] == 1.0 and r["adv/abs_mean"] == 0.0
        assert r["update/steps"] == 0 and r["update/skipped"] == 0
        assert r["update/skipped_no_signal"] == 4                    # 2 mini-batches x 2 epochs
        assert "update/loss" not in r and "update/grad_norm" not in r   # no mean over no step


@pytest.fixture()
def batch(tiny):
    """The tiny model, a rollout of 8 responses and update settings of 2 mini-batches of 4."""
    model, tokenizer = tiny
    rollout = HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=4)).generate(["1+1=", "2+3="], 4, seed=0)
    cfg = rl.RLConfig(minibatches_per_iter=2, epochs_per_iter=1, micro_batch_size=0, tau=0.5,
                      optim=OptimConfig(lr=0.01, warmup_steps=0))
    seed = 3
    chunks = torch.randperm(8, generator=torch.Generator().manual_seed(seed)).chunk(2)   # as update draws them
    return model, rollout, cfg, seed, chunks


def recorded_update(model, rollout, advantages, cfg, seed, monkeypatch):
    """rl.update's metrics and, per _minibatch_step call, (index, whether the weights changed)."""
    calls = []
    step = rl.minibatch_step

    def recording(loop, rollout_, advantages_, index, cfg_, lr):
        before = [p.detach().clone() for p in loop.trainee.parameters()]
        stats = step(loop, rollout_, advantages_, index, cfg_, lr)
        calls.append((index.tolist(), not all(torch.equal(a, b) for a, b in zip(before, loop.trainee.parameters()))))
        return stats

    monkeypatch.setattr(rl, "minibatch_step", recording)
    loop = Loop(None, model, make_optimizer(model, cfg.optim), cfg.optim.grad_clip, 1)
    metrics = rl.update(loop, rollout, advantages, cfg, torch.Generator().manual_seed(seed))
    return metrics, calls


def test_mini_batches_with_signal_step(batch, monkeypatch):
    model, rollout, cfg, seed, chunks = batch
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.25, -0.25, 1.0, -1.0])
    metrics, calls = recorded_update(model, rollout, advantages, cfg, seed, monkeypatch)
    assert [index for index, _ in calls] == [c.tolist() for c in chunks]
    assert all(moved for _, moved in calls)
    assert metrics["update/steps"] == 2 and metrics["update/skipped_no_signal"] == 0
    assert metrics["update/skipped"] == 0 and math.isfinite(metrics["update/loss"])


def test_flat_mini_batch_before_any_step_is_skipped(batch, monkeypatch):
    model, rollout, cfg, seed, (_, second) = batch
    advantages = torch.zeros(8)
    advantages[second] = torch.tensor([1.0, -1.0, 0.5, -0.5])   # the first mini-batch is flat
    start = [p.detach().clone() for p in model.parameters()]
    metrics, calls = recorded_update(model, rollout, advantages, cfg, seed, monkeypatch)
    assert calls == [(second.tolist(), True)]                  # no forward for the flat one
    assert metrics["update/steps"] == 1 and metrics["update/skipped_no_signal"] == 1
    assert not all(torch.equal(a, b) for a, b in zip(start, model.parameters()))


def test_flat_mini_batch_after_a_step_still_steps(batch, monkeypatch):
    """Once a step has moved the weights, the tau term of a flat mini-batch pulls them back
    towards the reference: it is a real gradient, applied."""
    model, rollout, cfg, seed, (first, second) = batch
    advantages = torch.zeros(8)
    advantages[first] = torch.tensor([1.0, -1.0, 0.5, -0.5])   # the second mini-batch is flat
    metrics, calls = recorded_update(model, rollout, advantages, cfg, seed, monkeypatch)
    assert calls == [(first.tolist(), True), (second.tolist(), True)]
    assert metrics["update/steps"] == 2 and metrics["update/skipped_no_signal"] == 0


def test_the_decision_reads_the_whole_mini_batch_not_this_ranks_share(batch, monkeypatch):
    """Under torchrun every rank must take the same decision (FSDP's collectives): a rank whose
    share of a mini-batch is flat still steps when another rank's share has signal."""
    model, rollout, cfg, seed, (first, second) = batch
    advantages = torch.zeros(8)
    advantages[first[0]], advantages[second[0]] = 1.0, -1.0    # one row with signal per mini-batch
    monkeypatch.setattr(runtime, "shard", lambda index: index[1:])   # "this rank": the flat rows
    metrics, calls = recorded_update(model, rollout, advantages, cfg, seed, monkeypatch)
    assert [index for index, _ in calls] == [first[1:].tolist(), second[1:].tolist()]
    assert metrics["update/steps"] == 2 and metrics["update/skipped_no_signal"] == 0
