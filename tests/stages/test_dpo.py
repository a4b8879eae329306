"""`openk1 dpo`: learns a preference, reference computed once, micro-batches, exact resume."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from openk1.cli import main
from openk1.config import build
from openk1.data.io import write_jsonl
from openk1.errors import OpenK1Error
from openk1.models.io import load_model
from openk1.stages import dpo

# chosen: the short answer; rejected: a longer (correct) one and a wrong one
PAIRS = [{"prompt": f"{a}+1=", "chosen": f"\\boxed{{{a + 1}}}", "rejected": rejected}
         for a in range(3) for rejected in (f"{a}+1={a + 1} check ok \\boxed{{{a + 1}}}", "\\boxed{0}")]


def config(tmp_path, model_dir, **fields):
    write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    values = {"model": str(model_dir), "data": str(tmp_path / "pairs.jsonl"), "out": str(tmp_path / "run"),
              "beta": 0.5, "epochs": 0, "max_steps": 12, "batch_size": 6, "log_every": 1,
              "optim": {"lr": 0.01, "lr_min": 0.001, "warmup_steps": 0}, **fields}
    return build(dpo.DPOConfig, values)


def test_dpo_learns_the_preference(tmp_path, tiny_model_dir):
    summary = dpo.run(config(tmp_path, tiny_model_dir))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    reference = torch.load(tmp_path / "run" / dpo.REFERENCE_FILE)
    # policy = reference at step 1: log 2 but for the rounding of the log-prob sums (up to ~120,
    # ulp 7.6e-6) in the training and the reference passes' shapes, times beta: 8 eps x the
    # largest sum x beta = 5.5e-5 (measured <= 3e-7 with AMX / AVX2 / default kernels)
    step1_tol = 8 * torch.finfo(torch.float32).eps * 0.5 * float(reference.abs().max())
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=step1_tol)
    assert summary["final_loss"] < 0.3 and summary["final_pair_accuracy"] == 1.0
    assert summary["pairs"] == 6 and (tmp_path / "run" / "model" / "config.json").is_file()
    assert list((tmp_path / "run" / "tb").iterdir())                   # TensorBoard events
    # the trained model itself prefers every chosen answer more than the reference did
    model, tokenizer = load_model(summary["model"])
    with torch.no_grad():
        chosen, rejected, _ = dpo.sequence_logps(model, tokenizer, dpo.load_pairs(tmp_path / "pairs.jsonl"), 256)
    assert bool(((chosen - reference[:, 0]) - (rejected - reference[:, 1]) > 0).all())


def test_reference_is_the_starting_model(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir, max_steps=1)
    dpo.run(cfg)
    saved = torch.load(tmp_path / "run" / dpo.REFERENCE_FILE)
    model, tokenizer = load_model(tiny_model_dir)
    pairs = dpo.load_pairs(cfg.data.path)
    with torch.no_grad():
        chosen, rejected, tokens = dpo.sequence_logps(model, tokenizer, pairs, 256)
    # log-prob sums up to ~120: 8 eps x the largest (measured: equal, the same batch shapes)
    torch.testing.assert_close(saved, torch.stack([chosen, rejected], -1),
                               atol=8 * torch.finfo(torch.float32).eps * float(saved.abs().max()), rtol=0)
    assert tokens.tolist() == [len(c) + 1 for _, c, _ in pairs]        # characters + EOS


def test_micro_batches_give_the_same_gradient(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir, nll_weight=0.1)
    model, tokenizer = load_model(tiny_model_dir)
    pairs = dpo.load_pairs(cfg.data.path)
    reference = dpo.reference_logps(model, tokenizer, pairs, cfg) - 0.3   # a margin != 0
    grads, losses = [], []
    for micro in (0, 4, 1):
        model.zero_grad()
        stats = dpo.train_step(model, tokenizer, pairs, reference, cfg.model_copy(update={"micro_batch_size": micro}))
        losses.append(stats["loss"])
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    # Each micro-batch size pads the pairs into other shapes, so the sequence log-prob sums (up to
    # ~120 here) round differently, by ~ulp(120) = 7.6e-6; the loss sees them times beta: 8 eps x
    # the largest sum x beta = 5.5e-5 (measured <= 1.9e-7 with AMX / AVX2 / default kernels)
    loss_tol = 8 * torch.finfo(torch.float32).eps * cfg.beta * float(reference.abs().max())
    assert losses[1] == pytest.approx(losses[0], abs=loss_tol) and losses[2] == pytest.approx(losses[0], abs=loss_tol)
    # gradients: fp32 rounding of the backward's reductions, ~1e-7 relative each (measured <= 3.2e-7)
    for g in grads[1:]:
        assert float((g - grads[0]).norm()) <= 1e-5 * float(grads[0].norm())


def test_resume_is_exact(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir, max_steps=6, batch_size=4, checkpoint_every=3)
    dpo.run(cfg)
    full = dict(load_model(tmp_path / "run" / "model")[0].named_parameters())
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_000006")
    shutil.rmtree(tmp_path / "run" / "model")
    assert main(["dpo", "--config", str(tmp_path / "run" / "config.yaml"), "--resume"]) == 0
    resumed = dict(load_model(tmp_path / "run" / "model")[0].named_parameters())
    for name, value in full.items():
        torch.testing.assert_close(resumed[name], value, atol=1e-6, rtol=0)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics


def test_missing_field_names_file_and_row(tmp_path):
    write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "1+1=", "chosen": "2"}])
    with pytest.raises(OpenK1Error, match=r"bad.jsonl: line 1: missing field 'rejected'"):
        dpo.load_pairs(tmp_path / "bad.jsonl")
