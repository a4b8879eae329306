"""The reward interface every verifier follows.

A verifier is a pure function `(response: str, problem: Problem) -> Score`. `Score.reward` is the
number RL trains on and `openk1 eval` reports; `verdict` is a short machine-readable label and
`details` anything a human may want when reading a scored row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from openk1.types import Problem


@dataclass(frozen=True)
class Score:
    reward: float
    verdict: str
    details: dict[str, Any] = field(default_factory=dict)


Verifier = Callable[[str, Problem], Score]
