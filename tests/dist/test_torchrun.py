"""torchrun/FSDP2 on CPU: 2 gloo ranks give the loss and weights of 1 process (within 1e-5)."""

from __future__ import annotations

import json

import pytest
import torch
import workers
from spawn import run_ranks

from openk1.data.io import write_jsonl
from openk1.report.run_dir import read_metrics

pytestmark = pytest.mark.distributed
TOL = 1e-5


def sft_values(model, data, out):
    """5 rows a step -> rank shares 3|2 in micro-batches of 2 (padding passes on rank 1)."""
    return {"model": str(model), "data": str(data), "out": str(out), "epochs": 10, "max_steps": 4,
            "batch_size": 5, "micro_batch_size": 2, "log_every": 1,
            "optim": {"lr": 0.01, "lr_min": 0.001, "warmup_steps": 1, "grad_clip": 0.5}}


def dpo_values(model, data, out):
    """5 pairs a step -> rank shares 3|2 in micro-batches of 2 (a padding pass on rank 1)."""
    return {"model": str(model), "data": str(data), "out": str(out), "epochs": 0, "max_steps": 3,
            "batch_size": 5, "micro_batch_size": 2, "log_every": 1, "beta": 0.5, "nll_weight": 0.1,
            # Adam turns float noise on near-zero gradients into steps of ~lr (see rl_values): at
            # lr 2e-3 the weights of 1 and 2 processes ended 1.6e-5 apart, at 5e-4 within 1e-5
            "optim": {"lr": 0.0005, "lr_min": 0.0002, "warmup_steps": 0, "grad_clip": 0.5}}


def rl_values(model, data, out):
    return {"model": str(model), "data": str(data), "eval_data": str(data), "out": str(out),
            "iterations": 2, "prompts_per_iter": 3, "samples_per_prompt": 4, "eval_every": 2,
            "checkpoint_every": 2, "micro_batch_size": 2, "sampling": {"max_new_tokens": 6},
            "eval": {"samples_per_prompt": 1, "max_new_tokens": 6},
            "length_penalty_weight": 1.0,   # a random model is never right: length gives the signal
            # Adam turns float noise (1e-7) on near-zero gradients into steps of ~lr: a small lr
            # keeps the final weights of 1 and 2 processes within 1e-5 (loss and grad norm agree
            # to 1e-6 at any lr)
            "optim": {"lr": 0.002, "warmup_steps": 0},
            "lean": False}   # FSDP's sharded parameters take HF's forward (models/lean.py refuses them)


@pytest.fixture(scope="module")
def two_ranks(tiny_model_dir, fixed_batch, tmp_path_factory):
    """Every 2-rank run of this module, in one spawn of 2 gloo processes."""
    root = tmp_path_factory.mktemp("two_ranks")
    sft_rows = [{"prompt": f"{a}+1=", "response": f"\\boxed{{{a + 1}}}" + "!" * (a % 3)}
                for a in range(10)]
    write_jsonl(root / "sft.jsonl", sft_rows)
    rl_rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "type": "math", "difficulty": 1}
               for a in range(1, 5) for b in range(1, 4)]
    write_jsonl(root / "rl.jsonl", rl_rows)
    write_jsonl(root / "dpo.jsonl", [{"prompt": f"{a}+1=", "chosen": f"\\boxed{{{a + 1}}}",
                                      "rejected": f"{a}+1 is \\boxed{{{a + 2}}}" + "!" * a} for a in range(7)])
    calls = [("rl_update", (str(tiny_model_dir), str(fixed_batch), str(root / "update.pt"))),
             ("sft_run", (sft_values(tiny_model_dir, root / "sft.jsonl", root / "sft"),)),
             ("dpo_run", (dpo_values(tiny_model_dir, root / "dpo.jsonl", root / "dpo"),)),
             ("rl_run", (rl_values(tiny_model_dir, root / "rl.jsonl", root / "rl"), str(root)))]
    run_ranks(workers.several, 2, calls)
    return root


@pytest.fixture(scope="module")
def fixed_batch(tiny_model_dir, tmp_path_factory):
    """One global rollout (5 prompts x k=4 = 20 rows) with random advantages."""
    from openk1.models.io import load_model
    from openk1.rollout.hf import HFEngine, SamplingConfig

    model, tokenizer = load_model(tiny_model_dir)
    engine = HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=8))
    rollout = engine.generate([f"{a}+{a + 1}=" for a in range(1, 6)], 4, seed=3)
    advantages = torch.randn(20, generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("batch") / "batch.pt"
    torch.save({"rollout": rollout, "advantages": advantages}, path)
    return path


def test_rl_update_two_ranks_equals_one_process(tiny_model_dir, fixed_batch, two_ranks):
    # 3 mini-batches of 7, 7, 6 rows -> rank shares 4|3, 4|3, 3|3 in micro-batches of 3: rank 1
    # runs weight-0 padding passes; token_mean needs the all-reduced token count.
    one = workers.rl_update_results(str(tiny_model_dir), str(fixed_batch))
    two = torch.load(two_ranks / "update.pt", weights_only=False)
    for aggregation in workers.AGGREGATIONS:
        m1, m2 = one[aggregation]["metrics"], two[aggregation]["metrics"]
        assert m1["update/steps"] == m2["update/steps"] == 6
        assert abs(m1["update/loss"]) > 1e-3                  # a real loss, not a vacuous zero
        assert m2["update/loss"] == pytest.approx(m1["update/loss"], abs=TOL)
        assert m2["update/grad_norm"] == pytest.approx(m1["update/grad_norm"], abs=TOL)
        w1, w2 = one[aggregation]["weights"], two[aggregation]["weights"]
        assert w1.keys() == w2.keys()
        worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
        assert worst < TOL, f"{aggregation}: max weight difference {worst:.2e}"


def assert_trained_alike(start_dir, one, two, moved):
    """The 1-process model moved from the start by more than `moved` (it trained), and the
    2-rank model equals it within TOL."""
    from openk1.models.io import load_model

    w1, w2, start = (load_model(d)[0].state_dict() for d in (one / "model", two / "model", start_dir))
    assert max(float((w1[k] - start[k]).abs().max()) for k in w1) > moved
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < TOL


def test_sft_two_ranks_equals_one_process(tiny_model_dir, two_ranks, tmp_path):
    from openk1.config import build
    from openk1.stages import sft

    sft.run(build(sft.SFTConfig, sft_values(tiny_model_dir, two_ranks / "sft.jsonl", tmp_path / "one")))
    one, two = tmp_path / "one", two_ranks / "sft"
    m1, m2 = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [r["step"] for r in m2] == [1, 2, 3, 4]            # rank 0 alone wrote the metrics
    assert all(r1["tokens"] == r2["tokens"] > 0 for r1, r2 in zip(m1, m2))
    for r1, r2 in zip(m1, m2):
        assert r2["loss"] == pytest.approx(r1["loss"], abs=TOL)
        assert r2["grad_norm"] == pytest.approx(r1["grad_norm"], abs=TOL)
    assert_trained_alike(tiny_model_dir, one, two, moved=1e-3)


def test_dpo_two_ranks_equals_one_process(tiny_model_dir, two_ranks, tmp_path, monkeypatch):
    from openk1.config import build
    from openk1.models.lean import LeanModel
    from openk1.stages import dpo

    # the ranks' sharded parameters take HF's forward (LeanModel.of refuses DTensors): so does the
    # reference, or the two differ by the lean forward's rounding, which Adam amplifies
    monkeypatch.setattr(LeanModel, "of", classmethod(lambda cls, *args, **kwargs: None))
    dpo.run(build(dpo.DPOConfig, dpo_values(tiny_model_dir, two_ranks / "dpo.jsonl", tmp_path / "one")))
    one, two = tmp_path / "one", two_ranks / "dpo"
    m1, m2 = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [r["step"] for r in m2] == [1, 2, 3]               # rank 0 alone wrote the metrics
    for r1, r2 in zip(m1, m2):
        assert abs(r1["loss"]) > 1e-3
        for key in ("loss", "grad_norm", "reward/margin"):
            assert r2[key] == pytest.approx(r1[key], abs=TOL), key
    assert_trained_alike(tiny_model_dir, one, two, moved=1e-4)


def test_rl_stage_on_two_ranks_equals_one_process(tiny_model_dir, two_ranks, tmp_path):
    """`openk1 rl` under 2 ranks: each rank samples half the sequences (per-sequence random
    streams, so the same tokens), rank 0 alone writes, and the metrics and final weights are
    those of one process."""
    from openk1.config import build
    from openk1.models.io import load_model
    from openk1.stages import rl

    rl.run(build(rl.RLConfig, rl_values(tiny_model_dir, two_ranks / "rl.jsonl", tmp_path / "one")))
    one, two = tmp_path / "one", two_ranks / "rl"
    ranks = [torch.load(two_ranks / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["syncs"] for r in ranks] == [2, 2]              # one weight sync per iteration
    assert all(r["sharded"] for r in ranks)                    # each rank trains half the weights
    saved = load_model(two / "model")[0].state_dict()
    for name, value in saved.items():                          # both ranks roll out the saved model
        assert torch.equal(ranks[0]["weights"][name], value)
        assert torch.equal(ranks[1]["weights"][name], value)
    w1 = load_model(one / "model")[0].state_dict()
    start = load_model(tiny_model_dir)[0].state_dict()
    assert max(float((w1[k] - start[k]).abs().max()) for k in w1) > 1e-4   # it trained
    assert max(float((w1[k] - saved[k]).abs().max()) for k in w1) < TOL
    m1, m2 = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [r["step"] for r in m2] == [r["step"] for r in m1] == [0, 1, 2, 2]  # eval, 2 iters, eval
    train = [(r1, r2) for r1, r2 in zip(m1, m2) if "reward/mean" in r1]
    assert all(r2["update/steps"] == 4 and r2["update/skipped"] == 0 for _, r2 in train)
    for r1, r2 in zip(m1, m2):
        assert r1.keys() == r2.keys()
        for key, value in r1.items():
            # update/opmd/* describe the last micro-batch only (rank 0's under torchrun)
            if not key.startswith(("time/", "throughput/", "update/opmd/")):
                assert r2[key] == pytest.approx(value, abs=TOL), key
    assert (two / "checkpoints/step_000002/model/config.json").exists()
    summary = json.loads((two / "summary.json").read_text())
    assert summary["iterations"] == 2 and ranks[1]["summary"]["iterations"] == 2
