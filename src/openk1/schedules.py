"""Staged training schedules (report §2.5): a list of stages, each with its own maximum sequence
length, data mixture, budget and learning-rate schedule; the LR re-warms at every boundary.

    stage 0: steps [0, n0)        lr: warm-up -> lr_max -> decay -> lr_min
    stage 1: steps [n0, n0 + n1)  lr: re-warm -> its own lr_max -> decay -> its own lr_min

A stage's budget is `epochs` (passes over its mixture), `budget_tokens` (capacity of the packed
rows it trains on: steps x batch_size x max_seq_len) or `max_steps`; `max_steps` also caps the
other two. Presets mirroring the report live in `openk1/presets/{sft,pretrain}_k15.yaml`.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from openk1.config import Section
from openk1.errors import OpenK1Error


class Source(Section):
    """One dataset of a stage's mixture; `weight` is its share of the stage's packed rows."""

    path: str = Field(description="dataset (JSONL, Parquet or HF dataset folder; relative to data_root)")
    weight: float = Field(1.0, gt=0.0, description="share of the stage's packed rows (normalised over the sources)")
    name: str = Field("", description="label in metrics (default: the file name)")


class LRSchedule(Section):
    """Linear warm-up to lr_max over warmup_steps, then decay to lr_min at the stage's last step."""

    lr_max: float = Field(1e-3, gt=0.0, description="learning rate after warm-up")
    lr_min: float = Field(1e-4, ge=0.0, description="learning rate at the stage's last step")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps (the LR re-warms at every stage)")
    decay: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay from lr_max to lr_min")

    @model_validator(mode="after")
    def _decays(self) -> LRSchedule:
        if self.lr_min > self.lr_max:
            raise ValueError(f"lr_min ({self.lr_min}) must be <= lr_max ({self.lr_max})")
        return self


class Stage(Section):
    name: str = Field("", description="label in metrics and logs")
    max_seq_len: int = Field(2048, ge=0,
                             description="packed row length (or the per-example limit when pack is off; 0: none)")
    pack: bool = Field(True, description="false: one example per row (padded), as plain SFT")
    sources: list[Source] = Field(default_factory=list, description="the stage's data mixture; empty: the run's --data")
    epochs: float = Field(0.0, ge=0.0, description="budget: passes over the mixture")
    budget_tokens: int = Field(0, ge=0, description="budget: tokens of packed rows (steps x batch_size x max_seq_len)")
    max_steps: int = Field(0, ge=0, description="budget: optimizer steps; also caps the other two")
    lr: LRSchedule = Field(LRSchedule(), description="the stage's learning-rate schedule")
    rope_theta: float = Field(0.0, ge=0.0, description="> 0: set the model's RoPE base when the stage starts")

    @model_validator(mode="after")
    def _row_length(self) -> Stage:
        if self.max_seq_len == 0 and (self.pack or self.budget_tokens):
            raise ValueError("max_seq_len must be > 0 with pack: true "
                             "or a budget_tokens budget (0 = no length limit, unpacked rows only)")
        return self


def stage_lr(step: int, total: int, lr: LRSchedule) -> float:
    """LR at `step` (0-based) of a stage of `total` steps: warm-up, then decay reaching lr_min
    on the last step (total - 1).

    >>> stage_lr(0, 11, LRSchedule(lr_max=1.0, lr_min=0.0, warmup_steps=1, decay="linear"))
    1.0
    >>> stage_lr(10, 11, LRSchedule(lr_max=1.0, lr_min=0.0, warmup_steps=1, decay="linear"))
    0.0
    """
    if step < lr.warmup_steps:
        return lr.lr_max * (step + 1) / lr.warmup_steps
    if lr.decay == "constant":
        return lr.lr_max
    span = total - 1 - max(lr.warmup_steps - 1, 0)
    progress = min(1.0, (step - max(lr.warmup_steps - 1, 0)) / span) if span > 0 else 0.0
    if lr.decay == "linear":
        return lr.lr_max + (lr.lr_min - lr.lr_max) * progress
    return lr.lr_min + 0.5 * (lr.lr_max - lr.lr_min) * (1 + math.cos(math.pi * progress))


def stage_steps(stage: Stage, batch_size: int, rows_per_epoch: int | None) -> int:
    """Optimizer steps of a stage from its budget; `rows_per_epoch` (packed rows of one pass
    over the mixture) is only needed for an `epochs` budget."""
    if stage.epochs > 0:
        if not rows_per_epoch:
            raise OpenK1Error(f"stage {stage.name!r}: an epochs budget needs a non-empty mixture")
        steps = math.ceil(stage.epochs * rows_per_epoch / batch_size)
    elif stage.budget_tokens > 0:
        steps = math.ceil(stage.budget_tokens / (batch_size * stage.max_seq_len))
    else:
        steps = stage.max_steps
    steps = min(steps, stage.max_steps) if stage.max_steps else steps
    if steps <= 0:
        raise OpenK1Error(f"stage {stage.name!r}: no budget (set epochs, budget_tokens or max_steps)")
    return steps


def locate(step: int, steps_per_stage: list[int]) -> tuple[int, int]:
    """(stage index, step within the stage) of global step `step` (0-based).

    >>> locate(0, [3, 2]), locate(3, [3, 2]), locate(4, [3, 2])
    ((0, 0), (1, 0), (1, 1))
    """
    for index, n in enumerate(steps_per_stage):
        if step < n:
            return index, step
        step -= n
    raise OpenK1Error(f"step past the end of the schedule ({sum(steps_per_stage)} steps)")


def staged_lr(step: int, stages: list[Stage], steps_per_stage: list[int]) -> float:
    """LR at global step `step` of the whole staged schedule."""
    index, local = locate(step, steps_per_stage)
    return stage_lr(local, steps_per_stage[index], stages[index].lr)
