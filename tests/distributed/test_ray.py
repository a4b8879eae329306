"""`openk1 rl --ray` on a private Ray bound to 127.0.0.1 (num_cpus=2): 1 rollout worker,
1 reward worker, the trainer, 2 iterations; the same metrics and weights as one process."""

from __future__ import annotations

import os

import pytest
import torch
from compare import UPDATE_REL, assert_metrics_close, rel_diff

from openk1.data.io import write_jsonl
from openk1.report.run_dir import read_metrics

pytestmark = pytest.mark.distributed


def values(model, data, out):
    return {"model": str(model), "data": str(data), "eval_data": str(data), "out": str(out),
            "iterations": 2, "prompts_per_iter": 3, "samples_per_prompt": 4, "eval_every": 2,
            "checkpoint_every": 2, "micro_batch_size": 4, "sampling": {"max_new_tokens": 6},
            "eval": {"samples_per_prompt": 1, "sampling": {"max_new_tokens": 6}}, "length_penalty_weight": 1.0,
            "optim": {"lr": 0.002, "warmup_steps": 0}}


def test_stale_versions_are_refused(tiny_model_dir):
    from openk1.models.io import load_model
    from openk1.rollout.engine import Request
    from openk1.rollout.hf import SamplingConfig
    from openk1.stages.rl_ray import RolloutWorker, StaleWeightsError

    worker = RolloutWorker("hf", str(tiny_model_dir), SamplingConfig(max_new_tokens=3), None, False)
    state = {k: v + 1.0 for k, v in load_model(tiny_model_dir)[0].state_dict().items()}
    assert worker.load_weights(state, 2) == 2
    assert torch.equal(worker.engine.model.state_dict()["lm_head.weight"], state["lm_head.weight"])
    request = Request((1, 20, 21), (0, 0))
    with pytest.raises(StaleWeightsError, match="version 1 asked, version 2 held"):
        worker.sample([request], 1)
    with pytest.raises(StaleWeightsError, match="version 1 offered"):
        worker.load_weights(state, 1)
    assert worker.sample([request], 2).response_ids.shape[0] == 1


def test_rl_ray_equals_one_process(tiny_model_dir, tmp_path):
    ray = pytest.importorskip("ray")
    from openk1.config import build
    from openk1.models.io import load_model
    from openk1.stages import rl, rl_ray

    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "type": "math", "difficulty": 1}
            for a in range(1, 5) for b in range(1, 4)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    one, two = tmp_path / "one", tmp_path / "ray"
    rl.run(build(rl.RLConfig, values(tiny_model_dir, tmp_path / "train.jsonl", one)))
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    cfg = build(rl.RLConfig, values(tiny_model_dir, tmp_path / "train.jsonl", two)
                | {"ray": {"num_cpus": 2, "rollout_workers": 1, "reward_workers": 1}})
    summary = rl_ray.run(cfg)
    assert not ray.is_initialized()                           # the private Ray is shut down
    m1, m2 = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    # the version counts optimizer steps (an iteration without signal takes none: rl.update);
    # weights are pushed before the first rollout and before each one after a step moved them
    steps = [r["update/steps"] for r in m1 if "update/steps" in r]
    assert len(steps) == 2 and steps[-1] == 4
    assert summary["ray"]["policy_version"] == sum(steps)
    assert summary["ray"]["weight_pushes"] == 1 + sum(1 for n in steps[:-1] if n > 0)
    # eval at 0 (eval_at_start), then one line per iteration, the evaluation's figures in it
    assert [r["step"] for r in m2] == [r["step"] for r in m1] == [0, 1, 2]
    assert "eval/accuracy" in m1[-1] and "update/steps" in m1[-1]
    assert all(r1.keys() == r2.keys() for r1, r2 in zip(m1, m2))
    # the trainer actor may run other kernels or thread counts than this process: metrics at
    # rounding level, the weights through their update (tests/distributed/compare.py)
    assert_metrics_close(m1, m2, skip=("time/", "throughput/"))
    w1 = load_model(one / "model")[0].state_dict()
    w2 = load_model(two / "model")[0].state_dict()
    start = load_model(tiny_model_dir)[0].state_dict()
    assert max(float((w1[k] - start[k]).abs().max()) for k in w1) > 1e-4   # it trained
    assert rel_diff(w2, w1, start) <= UPDATE_REL
