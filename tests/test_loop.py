"""loop.py: the shared step loop's LR, guarded step, logging cadence, checkpoints and resume."""

import math

import pytest
import torch

from openk1.checkpoint import list_checkpoints
from openk1.loop import Loop, accumulate_micro
from openk1.optim import OptimConfig
from openk1.report.run_dir import RunDir, read_metrics


def make_loop(tmp_path, tiny, **fields):
    model, tokenizer = tiny
    values = {"log_every": 2, "checkpoint_every": 3, "keep_checkpoints": 0, **fields}
    return Loop.for_model(model, tokenizer, OptimConfig(lr=0.01, grad_clip=1.0), RunDir(tmp_path / "run"), **values)


def step_fn(loop, bad_steps=()):
    ids = torch.tensor([[5, 6, 7, 8]])

    def step(s):
        loss = loop.trainee(input_ids=ids, labels=ids).loss
        (loss * (math.inf if s in bad_steps else 1.0)).backward()
        return {"loss": float(loss.detach()), "seen": s}
    return step


def test_lr_logging_checkpoints_and_skipped_steps(tmp_path, tiny):
    loop = make_loop(tmp_path, tiny)
    marked = []

    def after(step, metrics):
        metrics["after"] = step
        marked.append(step)
        return step == 2

    last = loop.run(0, 7, lambda s: 0.1 * (s + 1), step_fn(loop, bad_steps={5}), after=after,
                    state=lambda: {"mine": 1})
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    # every 2nd step, the one `after` marked (step index 2 -> logged as 3) and the last
    assert [r["step"] for r in rows] == [2, 3, 4, 6, 7] and marked == list(range(7))
    assert [r["lr"] for r in rows] == pytest.approx([0.2, 0.3, 0.4, 0.6, 0.7])
    assert [r["seen"] for r in rows] == [r["after"] for r in rows] == [1, 2, 3, 5, 6]   # 0-based steps
    assert [r["skipped"] for r in rows] == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert last["seen"] == 6 and loop.optimizer.param_groups[0]["lr"] == pytest.approx(0.7)
    # checkpoints every 3 steps and at the end, with the stage's state
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_000003", "step_000006", "step_000007"]
    state = loop.resume()
    assert state == {"step": 7, "mine": 1}


def test_a_non_finite_gradient_skips_the_step(tmp_path, tiny):
    loop = make_loop(tmp_path, tiny, log_every=1)
    before = {k: v.clone() for k, v in loop.trainee.state_dict().items()}
    loop.run(0, 1, lambda s: 0.01, step_fn(loop, bad_steps={0}))
    row = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert row["skipped"] == 1.0 and row["grad_norm"] is None             # NaN -> null
    assert all(torch.equal(before[k], v) for k, v in loop.trainee.state_dict().items())


def test_resume_continues_exactly(tmp_path, tiny_model_dir):
    from openk1.models.io import load_model

    full = make_loop(tmp_path / "a", load_model(tiny_model_dir), log_every=1)
    full.run(0, 5, lambda s: 0.01, step_fn(full))
    first = make_loop(tmp_path / "b", load_model(tiny_model_dir), log_every=1)
    first.run(0, 3, lambda s: 0.01, step_fn(first))                    # "crash" after step 3
    model, tokenizer = load_model(tmp_path / "b" / "run" / "checkpoints" / "step_000003" / "model")
    again = make_loop(tmp_path / "b", (model, tokenizer), log_every=1)
    again.run(again.resume()["step"], 5, lambda s: 0.01, step_fn(again))
    a, b = (read_metrics(tmp_path / x / "run" / "metrics.jsonl") for x in "ab")
    assert a == b and [r["step"] for r in b] == [1, 2, 3, 4, 5]
    assert all(torch.equal(v, again.trainee.state_dict()[k]) for k, v in full.trainee.state_dict().items())


def test_micro_batches_sum_terms_and_weight_the_loss(tiny):
    model, _ = tiny
    seen = []

    def micro(index):
        seen.append(index.tolist())
        loss = sum(p.sum() for p in model.parameters()) * 0 + float(len(index))
        return loss, {"items": float(len(index))}

    assert accumulate_micro(5, 2, micro) == {"items": 5.0}
    assert seen == [[0, 1], [2, 3], [4]]
    assert accumulate_micro(3, 0, micro) == {"items": 3.0} and seen[-1] == [0, 1, 2]   # 0: one pass
