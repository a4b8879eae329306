"""Colocated RL (distributed/colocate.py, report §2.6.3): the offload / reload round trip is exact,
an iteration's result does not depend on it, each phase's memory is logged; log pi_theta_i of an
engine whose log-probs are not the trainer's is recomputed; weights are pushed to such an engine."""

from __future__ import annotations

import json

import torch

from openk1.config import build
from openk1.data.io import write_jsonl
from openk1.distributed.colocate import TrainState, resident_bytes
from openk1.models.forward import response_logprobs
from openk1.optim import OptimConfig, make_optimizer
from openk1.report.run_dir import read_metrics
from openk1.rollout.hf import HFEngine, SamplingConfig
from openk1.stages import rl


def stepped(model):
    """AdamW after two steps: moments in its state."""
    optimizer = make_optimizer(model, OptimConfig(lr=1e-3))
    for _ in range(2):
        sum(p.square().sum() for p in model.parameters()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return optimizer


def test_offload_and_reload_give_back_the_same_bits(tiny) -> None:
    model, _ = tiny
    optimizer = stepped(model)
    params = list(model.parameters())
    saved_params = [p.detach().clone() for p in params]
    saved_state = {i: {k: v.clone() for k, v in s.items()} for i, s in enumerate(optimizer.state.values())}
    held = resident_bytes(optimizer, params, torch.device("cpu"))
    state = TrainState(optimizer, params)
    state.offload()
    # off the device: parameters and moments are empty placeholders (the step counters stay)
    assert all(p.numel() == 0 for p in params) and resident_bytes(optimizer, params, torch.device("cpu")) < 100
    assert all(s["exp_avg"].numel() == 0 and s["exp_avg_sq"].numel() == 0 for s in optimizer.state.values())
    state.reload()
    assert resident_bytes(optimizer, params, torch.device("cpu")) == held
    assert all(torch.equal(p, q) for p, q in zip(params, saved_params))
    for i, s in enumerate(optimizer.state.values()):
        assert all(torch.equal(v, saved_state[i][k]) for k, v in s.items())
    state.reload()                                         # idempotent
    assert not state.offloaded and not state.host


def rl_values(model, data, out, colocate):
    return {"model": str(model), "data": str(data), "out": str(out), "iterations": 3, "prompts_per_iter": 3,
            "samples_per_prompt": 4, "sampling": {"max_new_tokens": 6}, "length_penalty_weight": 1.0,
            "reset_optimizer": False, "colocate": colocate, "eval_at_start": False,
            "optim": {"lr": 0.002, "warmup_steps": 0}}


def test_colocated_iterations_equal_plain_ones_and_log_each_phase(tmp_path, tiny_model_dir) -> None:
    from openk1.models.io import load_model

    data = tmp_path / "p.jsonl"
    write_jsonl(data, [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(1, 5) for b in range(1, 4)])
    for colocate in (False, True):
        rl.run(build(rl.RLConfig, rl_values(tiny_model_dir, data, tmp_path / str(colocate), colocate)))
    plain, colocated = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("False", "True"))
    varying = ("time/", "throughput/", "memory/")
    assert [{k: v for k, v in r.items() if not k.startswith(varying)} for r in plain] == \
        [{k: v for k, v in r.items() if not k.startswith(varying)} for r in colocated]
    a, b = (load_model(tmp_path / name / "model")[0].state_dict() for name in ("False", "True"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the last iteration (Adam's moments exist since an earlier one stepped; reset_optimizer
    # false): during the rollout only the weights are resident when colocated; during the update
    # the moments are back (3x the weights)
    assert any(r["update/steps"] > 0 for r in plain[:-1])
    weights = sum(p.numel() * 4 for p in load_model(tmp_path / "True" / "model")[0].parameters()) / 2**30
    last_plain, last_colocated = plain[-1], colocated[-1]
    assert last_plain["memory/rollout_train_state_gb"] > 2.5 * weights
    assert abs(last_colocated["memory/rollout_train_state_gb"] - weights) < 0.01 * weights
    assert last_colocated["memory/update_train_state_gb"] > 2.5 * weights


def test_log_probs_of_an_inexact_engine_are_recomputed(tiny) -> None:
    model, tokenizer = tiny
    rollout = HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=8)).generate(["12+3=", "7+8="], 2, seed=0)
    off = rollout.logp + 0.25 * rollout.action_mask                   # an engine 0.25 nats off on every token
    fresh = response_logprobs(model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                              rollout.action_mask)
    import dataclasses

    cfg = rl.RLConfig()
    fixed, gap = rl.current_logp(model, dataclasses.replace(rollout, logp=off), 0, cfg, every_token=True)
    mask = rollout.action_mask.bool()
    assert torch.allclose(fixed.logp[mask], fresh[mask], atol=1e-5)  # fp32, the same forward
    assert abs(gap["logp/recomputed_gap_abs"] - 0.25) < 1e-4
    untouched, none = rl.current_logp(model, dataclasses.replace(rollout, logp=off), 0, cfg)
    assert none == {} and torch.equal(untouched.logp, off)          # exact engine, nothing carried


def test_weights_are_pushed_to_an_engine_holding_its_own(tiny) -> None:
    model, _ = tiny

    class Holder:
        def __init__(self):
            self.pushed = []

        def load_weights(self, state):
            self.pushed.append({k: v.clone() for k, v in state.items()})

    holder = Holder()
    metrics = rl.push_weights(holder, model)
    assert len(holder.pushed) == 1 and all(torch.equal(holder.pushed[0][k], v) for k, v in model.state_dict().items())
    size = sum(v.numel() * v.element_size() for v in model.state_dict().values()) / 2**30
    assert abs(metrics["weight_sync/gb"] - size) < 1e-12 and metrics["time/weight_sync"] >= 0
    assert json.dumps(metrics)
