"""RL stage on a tiny random model: metrics, checkpoints, exact resume, bad input."""

import json
import math

import pytest

from openk1.config import build
from openk1.data.io import write_jsonl
from openk1.loop import Loop
from openk1.report.run_dir import read_metrics
from openk1.stages import rl

VOLATILE = ("time/", "throughput/")


def problems(tmp_path):
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "type": "math", "difficulty": 1}
            for a in range(1, 5) for b in range(1, 4)]
    path = tmp_path / "train.jsonl"
    write_jsonl(path, rows)
    return path


def config(tmp_path, model, out, **extra):
    values = {"model": str(model), "data": str(problems(tmp_path)), "out": str(out),
              "eval_data": str(problems(tmp_path)), "iterations": 4, "prompts_per_iter": 3,
              "samples_per_prompt": 4, "eval_every": 2, "checkpoint_every": 2,
              "sampling": {"max_new_tokens": 6}, "eval": {"samples_per_prompt": 1, "sampling": {"max_new_tokens": 6}},
              "optim": {"lr": 0.01, "warmup_steps": 0},
              "length_penalty_weight": 1.0,   # a random model is never right: length gives the signal
              **extra}
    return build(rl.RLConfig, values)


# 6-token responses in segments of 2: cut after 2 and 4 tokens, the third segment runs to the end
PARTIAL = {"enabled": True, "segment_tokens": 2, "max_segments": 3}


def stable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def test_rl_writes_run_directory(tmp_path, tiny_model_dir):
    summary = rl.run(config(tmp_path, tiny_model_dir, tmp_path / "run"))
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "model/config.json", "curves.png"):
        assert (run / name).exists(), name
    assert list((run / "tb").iterdir())
    rows = read_metrics(run / "metrics.jsonl")
    train = [r for r in rows if "reward/mean" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    # 2 mini-batches x 2 epochs, each a step or, when its responses are all equally long (the
    # random model rarely says EOS in 6 tokens) before any step, skipped: no signal
    assert all(r["update/steps"] + r["update/skipped_no_signal"] == 4 for r in train)
    assert any(r["update/steps"] == 4 and "update/loss" in r for r in train)
    assert all(r["update/skipped"] == 0 for r in train)
    assert {"time/rollout", "time/reward", "time/update"} <= set(train[0])
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 2, 4]
    assert json.loads((run / "summary.json").read_text())["accuracy"] == summary["accuracy"]


@pytest.mark.parametrize("extra", [
    {},
    {"reset_optimizer": False, "sampler": {"kind": "prioritized"}},   # optimizer + sampler state
    {"partial": PARTIAL},                                              # replay buffer state
], ids=["reset-uniform", "kept-optimizer-prioritized", "partial-rollouts"])
def test_resume_logs_the_same_metrics(tmp_path, tiny_model_dir, extra):
    full = tmp_path / "full"
    rl.run(config(tmp_path, tiny_model_dir, full, **extra))
    part = tmp_path / "part"
    rl.run(config(tmp_path, tiny_model_dir, part, iterations=2, **extra))  # "interrupted" after 2
    with (part / "metrics.jsonl").open("a") as f:                    # a half-logged iteration
        f.write(json.dumps({"step": 3, "reward/mean": 123.0}) + "\n")
    rl.run(config(tmp_path, tiny_model_dir, part, resume=True, **extra))
    assert stable(read_metrics(part / "metrics.jsonl")) == stable(read_metrics(full / "metrics.jsonl"))


def test_resume_without_checkpoint_is_an_error(tmp_path, tiny_model_dir):
    from openk1.config import dump
    from openk1.errors import OpenK1Error

    cfg = config(tmp_path, tiny_model_dir, tmp_path / "empty", resume=True)
    with pytest.raises(OpenK1Error, match="holds no run"):
        rl.run(cfg)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text(dump(cfg))   # started, killed before a checkpoint
    with pytest.raises(OpenK1Error, match="no checkpoint"):
        rl.run(cfg)


def test_non_finite_loss_skips_the_step(tmp_path, tiny):
    import torch

    from openk1.optim import make_optimizer
    from openk1.rollout.hf import HFEngine, SamplingConfig

    model, tokenizer = tiny
    cfg = rl.RLConfig(micro_batch_size=2)
    rollout = HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=4)).generate(["1+1="], 4, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = make_optimizer(model, cfg.optim)
    advantages = torch.tensor([1.0, float("nan"), -1.0, 0.0])
    loop = Loop(None, model, optimizer, cfg.optim.grad_clip, 1)
    stats = rl.minibatch_step(loop, rollout, advantages, torch.arange(4), cfg, cfg.optim.lr)
    assert stats["skipped"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    stats = rl.minibatch_step(loop, rollout, advantages.nan_to_num(0.0), torch.arange(4), cfg, cfg.optim.lr)
    assert stats["skipped"] == 0.0
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_partial_rollouts_carry_groups_and_log_metrics(tmp_path, tiny_model_dir):
    rl.run(config(tmp_path, tiny_model_dir, tmp_path / "run", iterations=5, partial=PARTIAL))
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "stop/normal" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    for r in rows:
        assert abs(sum(r[f"stop/{s}"] for s in ("normal", "budget", "repeat", "max_tokens")) - 1) < 1e-9
        assert r["sampler/effective_problems"] > 0
    assert rows[0]["stop/budget"] > 0.5           # the random model rarely says EOS in 2 tokens
    # a group is done at the latest two iterations after it starts: at most 2 x 3 groups wait
    assert all(r["partial/carried_groups"] <= 6 for r in rows) and rows[0]["partial/carried_groups"] > 0
    assert rows[2]["stop/budget"] < rows[0]["stop/budget"]  # iteration 3 finishes iteration 1's
    trained = [r for r in rows if "reward/mean" in r]
    assert trained and all(1 <= r["partial/segments_mean"] <= 3 for r in trained)
    assert max(r["partial/segments_mean"] for r in trained) > 2
    # 6 tokens in segments of 2: a response that ran past its first segment was continued
    assert all(0 < r["partial/continued_frac"] <= 1 for r in trained)
    assert max(r["partial/continued_frac"] for r in trained) > 0.5
    for r in trained:
        assert r["response_tokens/p10"] <= r["response_tokens/p50"] <= r["response_tokens/p90"] <= 6
        assert r["response_tokens/max"] <= 6
        assert r["accuracy/train_d1"] == r["accuracy/train"]         # every problem: difficulty 1


def test_bf16_precision_runs_rollout_and_update_in_bf16(tmp_path, tiny_model_dir, monkeypatch):
    """precision: bf16 reaches the RL rollout decoder (the held-out evaluation stays fp32) and the
    update, whose losses are finite."""
    from openk1.models import lean

    dtypes = []
    decoder = lean.LeanModel.decoder

    def spy(self, slots, length):
        dtypes.append(self.dtype)
        return decoder(self, slots, length)

    monkeypatch.setattr(lean.LeanModel, "decoder", spy)
    rl.run(config(tmp_path, tiny_model_dir, tmp_path / "run", precision="bf16", iterations=2, eval_at_start=False))
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "reward/mean" in r]
    updated = [r for r in rows if "update/loss" in r]   # an iteration with no signal takes no step
    assert len(rows) == 2 and updated and all(math.isfinite(r["update/loss"]) for r in updated)
    import torch

    assert dtypes and set(dtypes[:2]) == {torch.bfloat16}   # RL rollouts (eval decodes in fp32)
    assert torch.float32 in dtypes                            # the held-out evaluation


@pytest.mark.parametrize("length_weight, expected", [
    (0.0, [1.0, 0.75, 0.0, 0.75, -0.25, 1.0]),
    # + 0.5 x length reward: lengths 2, 6, 4 -> lambda 0.5, -0.5, 0 (the wrong one: min(0, 0));
    # lengths 3, 5, 1 -> lambda 0, -0.5, 0.5 (the wrong one: -0.5)
    (0.5, [1.25, 0.5, 0.0, 0.75, -0.5, 1.25]),
], ids=["no-length-penalty", "length-penalty"])
def test_rewards_for_subtracts_repeat_penalty(length_weight, expected):
    """repeat_penalty is subtracted from every response stopped for repeating, right or wrong,
    and from no other (a response cut at max_tokens is just wrong); the length reward adds."""
    import torch

    from openk1.types import Problem, Rollout

    batch = [Problem("1+1=", "2"), Problem("2+2=", "4")]
    texts = ["\\boxed{2}", "\\boxed{2}", "\\boxed{3}", "\\boxed{4}", "\\boxed{1}", "\\boxed{4}"]
    stops = ["normal", "repeat", "max_tokens", "repeat", "repeat", "normal"]
    lengths = torch.tensor([2, 6, 4, 3, 5, 1])
    mask = (torch.arange(6)[None] < lengths[:, None]).long()
    rollout = Rollout(torch.ones(6, 4, dtype=torch.long), torch.ones(6, 4, dtype=torch.long),
                      torch.ones(6, 6, dtype=torch.long) * mask, mask, torch.zeros(6, 6), stops, texts=texts)
    cfg = rl.RLConfig(repeat_penalty=0.25, length_penalty_weight=length_weight)
    rewards, correct, metrics = rl.rewards_for(rollout, batch, 3, 0, cfg)
    assert correct.tolist() == [True, True, False, True, False, True]
    assert rewards.tolist() == expected
    assert metrics == {"reward/length_weight": length_weight}
    off = rl.rewards_for(rollout, batch, 3, 0, cfg.model_copy(update={"repeat_penalty": 0.0}))[0]
    assert off.tolist() == [e + 0.25 * (s == "repeat") for e, s in zip(expected, stops)]
