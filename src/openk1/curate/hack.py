"""Easy-to-hack filter, `curate.hack` (report §2.1): the model answers with no chain of thought,
`attempts` (N = 8) times; a prompt answered right within N tries is easy to hack (a guess, not
reasoning, earns its reward) and is dropped.
"""

from __future__ import annotations

from collections import Counter

from pydantic import Field, field_validator

from openk1.config import Section
from openk1.curate.rows import Row, drop
from openk1.curate.sampler import Sampler, correct, scorable
from openk1.rollout.hf import SamplingConfig

DEFAULT_HACK_TEMPLATE = ("{prompt}\n\nAnswer directly, without any working or explanation: "
                         "write only the final answer in \\boxed{}.")


class HackSettings(Section):
    """Easy-to-hack filter: answer with no chain of thought; right within `attempts` -> drop."""

    enabled: bool = Field(True, description="drop prompts answered right without a chain of thought")
    attempts: int = Field(8, gt=0, description="direct answers per prompt (report §2.1: N = 8)")
    # quote it for YAML: --set 'hack.template="{prompt}"'
    template: str = Field(DEFAULT_HACK_TEMPLATE,
                          description="prompt asking for the answer only; `{prompt}` is replaced by the prompt")
    sampling: SamplingConfig = Field(SamplingConfig(max_new_tokens=32),
                                     description="how the direct answers are sampled")

    @field_validator("template")
    @classmethod
    def _has_prompt(cls, template: str) -> str:
        if "{prompt}" not in template:
            raise ValueError("must contain {prompt}")
        return template


def hack_filter(rows: list[Row], settings: HackSettings, sampler: Sampler, counts: Counter[str]) -> None:
    """Drop every scorable prompt the model answers right at least once without reasoning."""
    targets = scorable(rows)
    problems = [r.problem for r in targets if r.problem is not None]
    texts = [settings.template.replace("{prompt}", p.prompt) for p in problems]
    for row, rewards in zip(targets, sampler.rewards("hack", problems, texts, settings.attempts,
                                                     settings.sampling)):
        hits = correct(rewards)
        if hits:
            drop(row, "easy_to_hack", counts, hack_hits=hits,
                 reason_detail=f"{hits}/{settings.attempts} answer-only attempts right")

