"""Which prompts each RL iteration trains on.

A sampler is a deterministic function of (seed, iteration) plus whatever state it tracks; its
`state_dict` goes into the checkpoint so a resumed run samples exactly what an uninterrupted
one would.
"""

from __future__ import annotations

import random
from typing import Any


class UniformSampler:
    """Epochs over a shuffled order of the prompts: every prompt once before any repeats."""

    def __init__(self, num_problems: int, seed: int) -> None:
        self.num_problems, self.seed = num_problems, seed

    def _order(self, epoch: int) -> list[int]:
        order = list(range(self.num_problems))
        random.Random(f"{self.seed}-uniform-{epoch}").shuffle(order)
        return order

    def sample(self, iteration: int, count: int) -> list[int]:
        """Indices for `iteration` when every iteration takes `count` prompts."""
        start = iteration * count
        positions = range(start, start + count)
        orders = {e: self._order(e) for e in {p // self.num_problems for p in positions}}
        return [orders[p // self.num_problems][p % self.num_problems] for p in positions]

    def update(self, indices: list[int], success: list[float]) -> None:
        """Uniform sampling tracks nothing; prioritized samplers do."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
