"""The shared LM trainer through `openk1 pretrain`: staged LR, lengths, mixture, exact resume."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from openk1.config import build
from openk1.data.io import write_jsonl
from openk1.data.packing import Example
from openk1.stages import pretrain
from openk1.trainer import accumulate


def corpus(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": f"{i}+{i}={2 * i}"} for i in range(40)])      # 7-11 tokens
    write_jsonl(tmp_path / "b.jsonl", [{"text": "x" * (20 + i % 7)} for i in range(40)])     # 22-28 tokens


def config(tmp_path, model, **extra):
    stages = [
        {"name": "short", "max_seq_len": 16, "max_steps": 3, "sources": [{"path": "a.jsonl", "weight": 1.0}],
         "lr": {"lr_max": 0.01, "lr_min": 0.001, "warmup_steps": 1, "decay": "linear"}},
        {"name": "long", "max_seq_len": 32, "max_steps": 3, "rope_theta": 1e6,
         "sources": [{"path": "b.jsonl", "weight": 0.4}, {"path": "a.jsonl", "weight": 0.6}],
         "lr": {"lr_max": 0.005, "lr_min": 0.0005, "warmup_steps": 2, "decay": "cosine"}},
    ]
    values = {"model": str(model), "out": str(tmp_path / "run"), "data_root": str(tmp_path), "batch_size": 5,
              "log_every": 1, "checkpoint_every": 2, "keep_checkpoints": 5, "stages": stages,
              "eval_loss_data": str(tmp_path / "a.jsonl"), **extra}
    return build(pretrain.PretrainConfig, values)


def metrics(tmp_path):
    return [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_stages_lr_lengths_mixture_and_rope(tmp_path, tiny_model_dir):
    corpus(tmp_path)
    summary = pretrain.run(config(tmp_path, tiny_model_dir))
    rows = metrics(tmp_path)
    assert summary["stage_steps"] == [3, 3] and [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    # stage 1: warm-up 1 step then linear 0.01 -> 0.001 over steps 0..2; stage 2 re-warms over 2 steps
    assert [r["lr"] for r in rows] == pytest.approx([0.01, 0.0055, 0.001, 0.0025, 0.005, 0.0005], rel=1e-12)
    assert [r["seq_len"] for r in rows] == [16, 16, 16, 32, 32, 32]
    assert all(r["row_tokens/max"] <= r["seq_len"] for r in rows) and rows[-1]["row_tokens/max"] > 16
    # 3 steps x 5 rows = 15 rows: weights 0.4 / 0.6 -> exactly 6 / 9
    assert rows[-1]["mix/b"] == pytest.approx(0.4) and rows[-1]["mix/a"] == pytest.approx(0.6)
    assert rows[2]["mix/a"] == 1.0 and "eval_loss" in rows[2] and "eval_loss" in rows[5]
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert (saved.get("rope_parameters") or saved)["rope_theta"] == 1e6


def test_interrupted_then_resumed_logs_the_same(tmp_path, tiny_model_dir):
    corpus(tmp_path)
    pretrain.run(config(tmp_path, tiny_model_dir))
    full = metrics(tmp_path)
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "run" / "model" / "model.safetensors")
    for later in ("step_000004", "step_000006"):          # "crash" after the step-2 checkpoint
        shutil.rmtree(tmp_path / "run" / "checkpoints" / later)
    pretrain.run(config(tmp_path, tiny_model_dir, resume=True))
    resumed = metrics(tmp_path)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(full, resumed):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), k
    again = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert all(torch.allclose(weights[k], again[k], atol=1e-7) for k in weights)


def test_accumulation_matches_one_batch_and_bf16_runs(tiny):
    model, tok = tiny
    rows = [[Example([1, 5, 6, 7], [0, 1, 1, 1]), Example([1, 8, 9], [0, 0, 1])],
            [Example([1, 10, 11, 12, 13, 14], [0, 1, 1, 1, 1, 1])], [Example([1, 20], [0, 1])]]
    cfg = build(pretrain.PretrainConfig, {"batch_size": 3})
    grads = []
    for micro in (0, 1):
        model.zero_grad()
        loss, n = accumulate(model, rows, cfg.model_copy(update={"micro_batch_size": micro}), tok.pad_token_id,
                             torch.device("cpu"))
        grads.append(([p.grad.clone() for p in model.parameters()], loss))
    assert n == 3 + 1 + 5 + 1
    # the same fp32 sums in other micro-batches: the loss (~4.6) within 1e-6 relative (8 eps),
    # gradients within 1e-5 relative + 1e-6 (measured: losses <= 5e-8 relative, gradients <= 0.02
    # of that allowance, AMX / AVX2 / default kernels)
    assert grads[0][1] == pytest.approx(grads[1][1], rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[0][0], grads[1][0]))
    model.zero_grad()
    bf16 = cfg.model_copy(update={"precision": "bf16"})
    loss, _ = accumulate(model, rows, bf16, tok.pad_token_id, torch.device("cpu"))
    assert abs(loss - grads[0][1]) < 0.1   # bf16 (eps 2^-7) on a loss of ~4.6: measured 7e-5


def test_make_corpus_excludes_heldout(tmp_path):
    cfg = pretrain.CorpusConfig(base_docs=50, cooldown_docs=50, long_docs=5, max_difficulty=1)
    paths = pretrain.make_corpus(cfg, tmp_path, exclude={"10+5="})
    texts = [json.loads(x)["text"] for p in paths.values() for x in Path(p).read_text().splitlines()]
    assert len(texts) == 105 and not any("10+5=" in t for t in texts)
    assert "plan" in texts[60] and "\\boxed{" in texts[60]
