"""Difficulty, `curate.difficulty` (report §2.1, "balanced difficulty"): the pass rate of
`samples_per_prompt` (10) answers sampled at a high temperature becomes the row's `pass_rate`
and `difficulty` label ("unreachable" at 0, "trivial" at 1, else `bin_labels` split at
`bin_edges`); a `difficulty` the row already had moves to `difficulty_given`. Trivial prompts
are dropped by default, unreachable ones only with `drop_unreachable`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import Field, model_validator

from openk1.config import Section
from openk1.curate.rows import Row, drop
from openk1.curate.sampler import Sampler, correct, scorable
from openk1.rollout.hf import SamplingConfig


class DifficultySettings(Section):
    """Pass rate of `samples_per_prompt` answers at `sampling.temperature` (report §2.1: 10, high T)."""

    enabled: bool = Field(True, description="label each row with its pass rate and a difficulty")
    samples_per_prompt: int = Field(10, gt=0,
                                    description="answers sampled per prompt for its pass rate (report §2.1: 10)")
    sampling: SamplingConfig = Field(SamplingConfig(max_new_tokens=1024),
                                     description="how the answers are sampled (report §2.1: a high temperature)")
    bin_edges: list[float] = Field(default_factory=lambda: [0.3, 0.7],
                                   description="pass-rate edges between the bin_labels")
    bin_labels: list[str] = Field(
        default_factory=lambda: ["hard", "medium", "easy"],
        description="difficulty labels, hardest (lowest pass rate) first; one more than bin_edges")
    drop_trivial: bool = Field(True, description="drop prompts of pass rate 1")
    drop_unreachable: bool = Field(False, description="drop prompts of pass rate 0")

    @model_validator(mode="after")
    def _bins(self) -> DifficultySettings:
        edges = self.bin_edges
        if len(self.bin_labels) != len(edges) + 1:
            raise ValueError("bin_labels needs one label more than bin_edges")
        if any(not 0 < e < 1 for e in edges) or edges != sorted(set(edges)):
            raise ValueError("bin_edges must increase strictly inside (0, 1)")
        return self


def difficulty_label(pass_rate: float, settings: DifficultySettings) -> str:
    """'unreachable' at 0, 'trivial' at 1, else bin i of [0, e1), [e1, e2), ..., [e_m, 1).

    >>> difficulty_label(0.3, DifficultySettings())
    'medium'
    """
    if pass_rate <= 0:
        return "unreachable"
    if pass_rate >= 1:
        return "trivial"
    return settings.bin_labels[sum(pass_rate >= e for e in settings.bin_edges)]


def rate_difficulty(rows: list[Row], settings: DifficultySettings, sampler: Sampler,
                    counts: Counter[str], flagged: Counter[str]) -> list[float]:
    """Sets `pass_rate` and the `difficulty` label; returns every pass rate measured."""
    targets = scorable(rows)
    problems = [r.problem for r in targets if r.problem is not None]
    k = settings.samples_per_prompt
    rates = []
    for row, rewards in zip(targets, sampler.rewards("difficulty", problems,
                                                     [p.prompt for p in problems], k, settings.sampling)):
        rate = correct(rewards) / k
        rates.append(rate)
        if row.data.get("difficulty") is not None:
            row.data["difficulty_given"] = row.data["difficulty"]
        row.data.update(pass_rate=rate, difficulty=difficulty_label(rate, settings))
        extreme = {1.0: ("trivial", settings.drop_trivial), 0.0: ("unreachable", settings.drop_unreachable)}
        if rate in extreme:
            label, dropped = extreme[rate]
            if dropped:
                drop(row, label, counts, reason_detail=f"pass rate {rate:g} over {k} samples")
            else:
                flagged[label] += 1
    return rates


def pass_rate_summary(rates: list[float], settings: DifficultySettings) -> dict[str, Any]:
    """summary.json's pass-rate histogram, mean pass rate and rows per difficulty label."""
    k = settings.samples_per_prompt
    hist = Counter(round(r * k) for r in rates)
    labels = Counter(difficulty_label(r, settings) for r in rates)
    order = ["unreachable", *settings.bin_labels, "trivial"]
    return {
        "pass_rate_histogram": {f"{j / k:.2f}": hist[j] for j in range(k + 1)},
        "mean_pass_rate": sum(rates) / len(rates) if rates else None,
        "difficulty_counts": {label: labels[label] for label in order},
    }

