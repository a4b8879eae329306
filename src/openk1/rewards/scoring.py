"""Dispatch a response to the verifier of its problem's type; score many in parallel.

The RL stage, `openk1 eval` and `openk1 score` all call `score_many`, so training and
evaluation use the very same verifier.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Callable

from openk1.rewards.base import Score, Verifier
from openk1.types import Problem


def _math() -> Verifier:
    from openk1.rewards.math import verify_math

    return verify_math


def _code() -> Verifier:
    from openk1.rewards.code import verify_code

    return verify_code


# problem type -> factory of its verifier (imported lazily: code needs the sandbox)
VERIFIERS: dict[str, Callable[[], Verifier]] = {"math": _math, "code": _code}


def score_one(response: str, problem: Problem) -> Score:
    """Score one response; a failure to score is reward 0 with a verdict saying why."""
    factory = VERIFIERS.get(problem.type)
    if factory is None:
        return Score(0.0, "unsupported_type", {"type": problem.type})
    try:
        return factory()(response, problem)
    except Exception as exc:  # a verifier bug must not kill a training run
        return Score(0.0, "error", {"error": f"{type(exc).__name__}: {exc}"})


def _score_chunk(pairs: list[tuple[str, Problem]]) -> list[Score]:
    return [score_one(r, p) for r, p in pairs]


def score_many(responses: list[str], problems: list[Problem], workers: int = 0) -> list[Score]:
    """Scores in input order; `workers` > 0 runs verifiers in that many processes (each its own
    main thread, which math-verify's signal-based timeouts need)."""
    pairs = list(zip(responses, problems, strict=True))
    if workers <= 0 or len(pairs) < 2:
        return _score_chunk(pairs)
    size = max(1, len(pairs) // (workers * 4))
    chunks = [pairs[i : i + size] for i in range(0, len(pairs), size)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return [s for part in pool.map(_score_chunk, chunks) for s in part]
