"""The generation seam of filters that only need "k answers to each prompt" (curate)."""

from __future__ import annotations

from typing import Any, Protocol

from openk1.rollout.hf import HFEngine, SamplingConfig


class Generator(Protocol):
    def generate(self, prompts: list[str], k: int, sampling: SamplingConfig, seed: int) -> list[str]:
        """k texts per prompt, grouped: [k of prompts[0], k of prompts[1], ...]."""
        ...


class EngineGenerator:
    """The rollout engine (HFEngine) over an in-process model."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def generate(self, prompts: list[str], k: int, sampling: SamplingConfig, seed: int) -> list[str]:
        return HFEngine(self.model, self.tokenizer, sampling).generate(prompts, k, seed).texts
