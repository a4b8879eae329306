"""Staged LR schedule: hand-computed values at warm-up, decay and stage boundaries."""

import math

import pytest

from openk1.errors import OpenK1Error
from openk1.schedules import LRSchedule, Stage, locate, stage_lr, stage_steps, staged_lr


def test_stage_lr_cosine_by_hand():
    lr = LRSchedule(lr_max=2e-5, lr_min=2e-6, warmup_steps=2, decay="cosine")
    # warm-up: 2e-5 * 1/2, 2e-5 * 2/2; decay over steps 1..9 (span 8): step 5 is halfway
    assert stage_lr(0, 10, lr) == pytest.approx(1e-5, rel=1e-12)
    assert stage_lr(1, 10, lr) == pytest.approx(2e-5, rel=1e-12)
    assert stage_lr(5, 10, lr) == pytest.approx(2e-6 + 0.5 * 1.8e-5, rel=1e-12)     # 1.1e-5
    assert stage_lr(3, 10, lr) == pytest.approx(2e-6 + 0.9e-5 * (1 + math.cos(math.pi / 4)), rel=1e-12)
    assert stage_lr(9, 10, lr) == pytest.approx(2e-6, rel=1e-12)


def test_stage_lr_linear_and_constant():
    lin = LRSchedule(lr_max=1.0, lr_min=0.2, warmup_steps=0, decay="linear")
    assert [stage_lr(s, 5, lin) for s in range(5)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2], abs=1e-12)
    const = LRSchedule(lr_max=0.5, lr_min=0.1, warmup_steps=4, decay="constant")
    assert [stage_lr(s, 6, const) for s in range(6)] == pytest.approx([0.125, 0.25, 0.375, 0.5, 0.5, 0.5])
    assert stage_lr(0, 1, lin) == 1.0          # a one-step stage stays at lr_max


def test_rewarm_at_stage_boundary():
    """The report's SFT: 2e-5 -> 2e-6, then re-warmed to 1e-5 -> 1e-6."""
    stages = [Stage(max_seq_len=32, lr=LRSchedule(lr_max=2e-5, lr_min=2e-6, warmup_steps=0)),
              Stage(max_seq_len=128, lr=LRSchedule(lr_max=1e-5, lr_min=1e-6, warmup_steps=2))]
    steps = [4, 5]
    assert staged_lr(0, stages, steps) == pytest.approx(2e-5, rel=1e-12)
    assert staged_lr(3, stages, steps) == pytest.approx(2e-6, rel=1e-12)      # end of stage 1
    assert staged_lr(4, stages, steps) == pytest.approx(0.5e-5, rel=1e-12)    # re-warm 1/2
    assert staged_lr(5, stages, steps) == pytest.approx(1e-5, rel=1e-12)
    assert staged_lr(8, stages, steps) == pytest.approx(1e-6, rel=1e-12)      # end of stage 2
    with pytest.raises(OpenK1Error):
        locate(9, steps)


def test_stage_steps_from_budgets():
    assert stage_steps(Stage(epochs=2, max_seq_len=8), batch_size=4, rows_per_epoch=10) == 5     # ceil(20/4)
    assert stage_steps(Stage(budget_tokens=1000, max_seq_len=32),
                       batch_size=4, rows_per_epoch=None) == 8                                 # ceil(1000/128)
    assert stage_steps(Stage(epochs=2, max_steps=3), batch_size=4, rows_per_epoch=10) == 3
    assert stage_steps(Stage(max_steps=7), batch_size=4, rows_per_epoch=None) == 7
    with pytest.raises(OpenK1Error, match="budget"):
        stage_steps(Stage(), batch_size=4, rows_per_epoch=None)


def test_report_presets_match_the_report():
    from pathlib import Path

    from openk1.config import build, read_yaml
    from openk1.stages.pretrain import PretrainConfig
    from openk1.stages.sft import SFTConfig

    presets = Path(__file__).resolve().parent.parent / "src" / "openk1" / "presets"
    sft = build(SFTConfig, read_yaml(presets / "sft_k15.yaml")).stages
    assert [s.max_seq_len for s in sft] == [32768, 131072]
    assert [(s.lr.lr_max, s.lr.lr_min) for s in sft] == [(2e-5, 2e-6), (1e-5, 1e-6)]
    assert [s.epochs for s in sft] == [1, 1]
    pre = build(PretrainConfig, read_yaml(presets / "pretrain_k15.yaml")).stages
    assert [s.max_seq_len for s in pre] == [4096, 4096, 32768, 131072]
    assert pre[2].rope_theta == 1e6 and pre[1].lr.lr_max < pre[0].lr.lr_max
    for stage in pre[2:]:
        assert {s.path: s.weight for s in stage.sources} == {"long.jsonl": 0.4, "curated.jsonl": 0.6}
    demo = build(PretrainConfig, read_yaml(presets / "pretrain_demo.yaml")).stages
    assert [s.name for s in demo] == ["base", "cooldown", "long_256", "long_512"]
    assert [s.max_seq_len for s in demo] == [128, 128, 256, 512]
