"""Dispatch a response to the verifier of its problem's type; score many in parallel; compose
weighted reward terms per problem type.

The RL stage, `openk1 eval` and `openk1 score` all call `score_many`, so training and
evaluation use the very same verifier.

Composition (`RewardConfig`): each problem type maps to a list of (reward function, weight)
terms; a response's reward is the weighted sum of its type's terms, its verdict the first
term's, and `details["terms"]` lists every term's name, weight, reward, verdict and details.
YAML, e.g. the rule-based math verifier plus a reward model for free-form answers:

    rewards:
      math: [{name: math, weight: 1.0}]
      code: [{name: code, weight: 1.0}]
      freeform: [{name: reward_model, weight: 1.0, path: runs/rm/model, options: {threshold: 0.5}}]

Rule-based terms (math, code, code_fraction) run in the worker processes; model-based terms
(reward_model, cot_verifier: verifiers with a `score_batch` method) run batched in the calling
process, their model loaded once per process and cached.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Protocol, TypeVar

from pydantic import Field, field_validator, model_validator

from openk1.config import Section
from openk1.errors import OpenK1Error
from openk1.rewards.base import Score, Verifier
from openk1.types import PROBLEM_TYPES, Problem

T = TypeVar("T")
R = TypeVar("R")


def _math() -> Verifier:
    from openk1.rewards.math import verify_math

    return verify_math


def _code() -> Verifier:
    from openk1.rewards.code import verify_code

    return verify_code


# problem type -> factory of its verifier (imported lazily: code needs the sandbox)
VERIFIERS: dict[str, Callable[[], Verifier]] = {"math": _math, "code": _code}

MODEL_REWARDS: tuple[str, ...] = ("reward_model", "cot_verifier")  # need `path`, a model dir


class RewardTerm(Section):
    """One weighted term of a problem type's reward."""

    name: str = Field(description="the verifier: a key of REWARD_FUNCTIONS (rewards/scoring.py)")
    weight: float = Field(1.0, description="the term's weight in the sum")
    path: str = Field("", description="model directory (reward_model, cot_verifier)")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the verifier")

    @field_validator("name")
    @classmethod
    def _known_name(cls, name: str) -> str:
        if name not in REWARD_FUNCTIONS:
            raise ValueError(
                f"unknown reward function {name!r} (known: {', '.join(REWARD_FUNCTIONS)})"
            )
        return name

    @model_validator(mode="after")
    def _model_has_path(self) -> RewardTerm:
        if self.name in MODEL_REWARDS and not self.path:
            raise ValueError(f"reward function {self.name!r} needs `path`, a model directory")
        return self


class RewardConfig(Section):
    """Reward terms of each problem type; a type with no terms scores 0 ("unsupported_type")."""

    math: list[RewardTerm] = Field(default_factory=lambda: [RewardTerm(name="math")],
                                   description="reward terms of math problems")
    code: list[RewardTerm] = Field(default_factory=lambda: [RewardTerm(name="code")],
                                   description="reward terms of code problems")
    freeform: list[RewardTerm] = Field(default_factory=list,
                                       description="reward terms of freeform problems (none: they score 0)")

    def terms(self, problem_type: str) -> list[RewardTerm]:
        return list(getattr(self, problem_type, []))


def _math_term(term: RewardTerm) -> Verifier:
    if term.options:
        raise TypeError("the math verifier takes no options")
    return _math()


def _code_term(term: RewardTerm, mode: str = "all") -> Verifier:
    from openk1.rewards.code import make_code_verifier

    return make_code_verifier(**{"mode": mode, **term.options})


def _reward_model_term(term: RewardTerm) -> Verifier:
    from openk1.rewards.reward_model import RewardModelVerifier

    return RewardModelVerifier(term.path, **term.options)


def _cot_term(term: RewardTerm) -> Verifier:
    from openk1.rewards.cot_verifier import CoTVerifier

    return CoTVerifier(term.path, **term.options)


# reward function name -> factory of its verifier from the term (path, options)
REWARD_FUNCTIONS: dict[str, Callable[[RewardTerm], Verifier]] = {
    "math": _math_term,
    "code": _code_term,
    "code_fraction": functools.partial(_code_term, mode="fraction"),
    "reward_model": _reward_model_term,
    "cot_verifier": _cot_term,
}


def build_verifier(term: RewardTerm) -> Verifier:
    """The term's verifier, built once per process and term (a model loads once, then is reused)."""
    return _cached_verifier(term.model_dump_json())


@functools.lru_cache(maxsize=64)
def _cached_verifier(term_json: str) -> Verifier:
    term = RewardTerm.model_validate_json(term_json)
    try:
        return REWARD_FUNCTIONS[term.name](term)
    except TypeError as exc:
        raise OpenK1Error(f"rewards: {term.name}: bad options {term.options} ({exc})") from None


def score_one(response: str, problem: Problem) -> Score:
    """Score one response; a failure to score is reward 0 with a verdict saying why."""
    factory = VERIFIERS.get(problem.type)
    if factory is None:
        return Score(0.0, "unsupported_type", {"type": problem.type})
    return _safe(factory(), response, problem)


def _safe(verifier: Verifier, response: str, problem: Problem) -> Score:
    try:
        return verifier(response, problem)
    except Exception as exc:  # noqa: BLE001 - a verifier bug must not kill a training run
        return Score(0.0, "error", {"error": f"{type(exc).__name__}: {exc}"})


def _score_chunk(pairs: list[tuple[str, Problem]]) -> list[Score]:
    return [score_one(r, p) for r, p in pairs]


def _score_term_chunk(items: list[tuple[str, Problem, RewardTerm]]) -> list[Score]:
    return [_safe(build_verifier(term), r, p) for r, p, term in items]


def _map_chunks(fn: Callable[[list[T]], list[R]], items: list[T], workers: int) -> list[R]:
    """fn over chunks of `items`, in input order; in `workers` processes when workers > 0."""
    if workers <= 0 or len(items) < 2:
        return fn(items)
    size = max(1, len(items) // (workers * 4))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return [s for part in pool.map(fn, chunks) for s in part]


def score_many(
    responses: list[str],
    problems: list[Problem],
    workers: int = 0,
    rewards: RewardConfig | None = None,
) -> list[Score]:
    """Scores in input order; `workers` > 0 runs verifiers in that many processes (each its own
    main thread, which math-verify's signal-based timeouts need).

    rewards=None: one verifier per type (math -> math, code -> code; `VERIFIERS`). With a
    `RewardConfig`: the weighted sum of the type's terms (module doc).
    """
    pairs = list(zip(responses, problems, strict=True))
    if rewards is None:
        return _map_chunks(_score_chunk, pairs, workers)
    return _score_composed(pairs, workers, rewards)


class Scorer(Protocol):
    """`score_many`'s signature: scores in input order. The RL stage takes any Scorer
    (`openk1 rl --ray` passes its reward actors, stages/rl_ray.py)."""

    def __call__(self, responses: list[str], problems: list[Problem], workers: int = 0,
                 rewards: RewardConfig | None = None) -> list[Score]: ...


def _score_composed(
    pairs: list[tuple[str, Problem]], workers: int, rewards: RewardConfig
) -> list[Score]:
    """Every (row, term) scored once: plain verifiers through the pool, models batched here."""
    results: dict[tuple[int, int], Score] = {}  # (row, term index) -> score
    plain: list[tuple[int, int, RewardTerm]] = []
    for kind in PROBLEM_TYPES:
        rows = [i for i, (_, p) in enumerate(pairs) if p.type == kind]
        for t, term in enumerate(rewards.terms(kind) if rows else []):
            verifier = build_verifier(term)
            if hasattr(verifier, "score_batch"):
                scores = _safe_batch(verifier, [pairs[i] for i in rows])
                results.update({(i, t): s for i, s in zip(rows, scores, strict=True)})
            else:
                plain.extend((i, t, term) for i in rows)
    plain_scores = _map_chunks(
        _score_term_chunk, [(*pairs[i], term) for i, _, term in plain], workers
    )
    results.update({(i, t): s for (i, t, _), s in zip(plain, plain_scores, strict=True)})
    combined = []
    for i, (_, p) in enumerate(pairs):
        terms = rewards.terms(p.type)
        combined.append(combine(terms, [results[(i, t)] for t in range(len(terms))], p.type))
    return combined


def _safe_batch(verifier: Any, pairs: Sequence[tuple[str, Problem]]) -> list[Score]:
    try:
        return list(verifier.score_batch([r for r, _ in pairs], [p for _, p in pairs]))
    except Exception as exc:  # noqa: BLE001 - a reward-model failure must not kill a run
        return [Score(0.0, "error", {"error": f"{type(exc).__name__}: {exc}"})] * len(pairs)


def combine(terms: Sequence[RewardTerm], scores: Sequence[Score], problem_type: str) -> Score:
    """Weighted sum of term scores; the verdict is the first term's.

    >>> terms = [RewardTerm(name="math", weight=0.7), RewardTerm(name="code", weight=0.3)]
    >>> s = combine(terms, [Score(1.0, "correct"), Score(0.5, "wrong_answer")], "math")
    >>> round(s.reward, 6), s.verdict, [t["name"] for t in s.details["terms"]]
    (0.85, 'correct', ['math', 'code'])
    """
    if not terms:
        return Score(0.0, "unsupported_type", {"type": problem_type})
    reward = sum(term.weight * score.reward for term, score in zip(terms, scores, strict=True))
    details = [
        {
            "name": term.name,
            "weight": term.weight,
            "reward": score.reward,
            "verdict": score.verdict,
            "details": score.details,
        }
        for term, score in zip(terms, scores, strict=True)
    ]
    return Score(reward, scores[0].verdict, {"terms": details})
