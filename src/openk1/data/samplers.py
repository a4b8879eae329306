"""Which prompts each RL iteration trains on (report §2.3.4).

A sampler is a deterministic function of (seed, iteration) plus whatever state it tracks; its
`state_dict` goes into the checkpoint so a resumed run samples exactly what an uninterrupted
one would.

    uniform                 epochs over a shuffled order: every prompt once before any repeats
    curriculum              stages of allowed difficulties switching at set iterations (the
                            report's ablation: all problems, then hard ones only from iteration
                            24 of about 44)
    prioritized             P(i) ∝ max(1 - s_i, floor), s_i the tracked success rate of problem i
    curriculum+prioritized  the curriculum picks the allowed problems, priorities pick among them

Difficulty: numbers (and numeric strings such as "3") compare as numbers; any other label must
be listed in `SamplerConfig.difficulty_order`, easiest first, and ranks by its place there.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any, Literal, Protocol

import torch
from pydantic import Field, model_validator

from openk1.config import Section
from openk1.errors import OpenK1Error
from openk1.types import Problem

TINY_WEIGHT = 1e-300    # stands in for a zero weight inside the sampling keys only


class Sampler(Protocol):
    """What stages/rl.py needs from a sampler."""

    def sample(self, iteration: int, count: int) -> list[int]: ...
    def update(self, indices: list[int], success: list[float]) -> None: ...
    def probabilities(self, iteration: int) -> list[float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def epoch_sample(n: int, key: str, start: int, count: int) -> list[int]:
    """Positions [start, start + count) of an endless run of shuffled epochs over range(n).

    Epoch e is range(n) shuffled by random.Random(f"{key}-{e}"): every index once per epoch.

    >>> sorted(epoch_sample(4, "demo", 0, 4))
    [0, 1, 2, 3]
    """
    positions = range(start, start + count)
    orders = {e: _shuffled(n, f"{key}-{e}") for e in {p // n for p in positions}}
    return [orders[p // n][p % n] for p in positions]


def _shuffled(n: int, key: str) -> list[int]:
    order = list(range(n))
    random.Random(key).shuffle(order)
    return order


class UniformSampler:
    """Epochs over a shuffled order of the prompts: every prompt once before any repeats."""

    def __init__(self, num_problems: int, seed: int) -> None:
        self.num_problems, self.seed = num_problems, seed

    def sample(self, iteration: int, count: int) -> list[int]:
        """Indices for `iteration` when every iteration takes `count` prompts."""
        return epoch_sample(self.num_problems, f"{self.seed}-uniform", iteration * count, count)

    def update(self, indices: list[int], success: list[float]) -> None:
        """Uniform sampling tracks nothing; prioritized samplers do."""

    def probabilities(self, iteration: int) -> list[float]:
        """[N] the long-run share of each prompt: 1/N."""
        return [1.0 / self.num_problems] * self.num_problems

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class PrioritizedSampler:
    """P(i) ∝ max(1 - s_i, floor): problems the policy fails are sampled more (report §2.3.4).

    s_i starts at priors[i] and follows the per-prompt success rates x given to `update`: their
    running mean (ema=None; the prior counts until the first observation) or the exponential
    moving average s <- (1 - ema) s + ema x. The report has no floor; ours keeps a problem that
    was solved once, perhaps by luck, in play. An iteration's draws are without replacement
    (successive sampling: each next draw ∝ the weights of the problems left), seeded by
    (seed, iteration). `candidates` restricts a draw to some problems (used by a curriculum).

    >>> sampler = PrioritizedSampler([0.0, 0.5, 1.0], seed=0, floor=0.05)
    >>> [round(p, 4) for p in sampler.probabilities(0)]    # [1, 0.5, 0.05] / 1.55
    [0.6452, 0.3226, 0.0323]
    """

    def __init__(self, priors: list[float], seed: int, floor: float = 0.05,
                 ema: float | None = None) -> None:
        self.seed, self.floor, self.ema = seed, floor, ema
        self.success = torch.tensor(priors, dtype=torch.float64, device="cpu")     # [N] s_i
        self.counts = torch.zeros(len(priors), dtype=torch.long, device="cpu")      # [N] observations of i

    def weights(self, candidates: list[int] | None = None) -> torch.Tensor:
        """[N] max(1 - s_i, floor) on the candidates (default: all problems), 0 elsewhere."""
        return (1.0 - self.success).clamp_min(self.floor) * _mask(len(self.success), candidates)

    def probabilities(self, iteration: int, candidates: list[int] | None = None) -> list[float]:
        """[N] the distribution of a single draw; uniform over the candidates if all weigh 0."""
        weights = self.weights(candidates)
        if float(weights.sum()) <= 0.0:          # floor 0 and every candidate always solved
            weights = _mask(len(self.success), candidates)
        return (weights / weights.sum()).tolist()

    def sample(self, iteration: int, count: int, candidates: list[int] | None = None) -> list[int]:
        """`count` distinct indices, in draw order (Efraimidis-Spirakis: top-count of u^(1/p))."""
        pool = list(range(len(self.success))) if candidates is None else list(candidates)
        if count > len(pool):
            raise OpenK1Error(f"prioritized sampling draws without replacement: {count} prompts "
                              f"per iteration but only {len(pool)} problems to draw from")
        probs = torch.tensor(self.probabilities(iteration, candidates), dtype=torch.float64, device="cpu")[pool]
        generator = torch.Generator().manual_seed(_seed(self.seed, "prioritized", iteration))
        u = torch.rand(len(pool), generator=generator, dtype=torch.float64, device="cpu").clamp_min(1e-300)
        keys = u.log() / probs.clamp_min(TINY_WEIGHT)           # [len(pool)], larger first
        return [pool[j] for j in keys.topk(count).indices.tolist()]

    def update(self, indices: list[int], success: list[float]) -> None:
        """Fold in each problem's observed success rate (fraction of its k samples correct)."""
        for i, x in zip(indices, success, strict=True):
            if not 0.0 <= x <= 1.0:
                raise ValueError(f"success rate of problem {i} must lie in [0, 1], got {x}")
            self.counts[i] += 1
            rate = self.ema if self.ema is not None else 1.0 / int(self.counts[i])
            self.success[i] += rate * (x - self.success[i])

    def state_dict(self) -> dict[str, Any]:
        return {"success": self.success.tolist(), "counts": self.counts.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "success" not in state:
            raise OpenK1Error("the checkpoint's sampler state has no success rates: resume with "
                              "the sampler.kind the run was started with")
        if len(state["success"]) != len(self.success):
            raise OpenK1Error(f"sampler state tracks {len(state['success'])} problems but the "
                              f"data has {len(self.success)}; resume with the same data")
        self.success = torch.tensor(state["success"], dtype=torch.float64, device="cpu")
        self.counts = torch.tensor(state["counts"], dtype=torch.long, device="cpu")


def _mask(n: int, candidates: list[int] | None) -> torch.Tensor:
    """[n] float64: 1 on the candidates (all if None), 0 elsewhere."""
    if candidates is None:
        return torch.ones(n, dtype=torch.float64, device="cpu")
    keep = torch.zeros(n, dtype=torch.float64, device="cpu")
    keep[candidates] = 1.0
    return keep


def _seed(seed: int, kind: str, iteration: int) -> int:
    """A 63-bit generator seed from (seed, kind, iteration), stable across Python runs."""
    return random.Random(f"{seed}-{kind}-{iteration}").getrandbits(63)


class CurriculumSampler:
    """Stages of allowed problems that switch at set iterations (report §2.3.4).

    stages: (start_iteration, allowed indices), the first starting at 0, starts increasing.
    Within a stage the draw is uniform (epochs over a shuffled order of the stage's problems,
    counted from the stage's start: every one once before any repeats), or, given `inner`, the
    prioritized sampler restricted to them; its success rates carry across stages.

    >>> sampler = CurriculumSampler(4, [(0, [0, 1, 2, 3]), (2, [2, 3])], seed=0)
    >>> [sampler.stage(i) for i in range(4)], sorted(sampler.sample(2, 2))
    ([0, 0, 1, 1], [2, 3])
    """

    def __init__(self, num_problems: int, stages: list[tuple[int, list[int]]], seed: int,
                 inner: PrioritizedSampler | None = None) -> None:
        starts = [start for start, _ in stages]
        if not stages or starts[0] != 0 or starts != sorted(set(starts)):
            raise OpenK1Error(f"curriculum stage starts must begin at 0 and increase, got {starts}")
        for start, allowed in stages:
            if not allowed or not all(0 <= i < num_problems for i in allowed):
                raise OpenK1Error(f"curriculum stage starting at iteration {start} has no "
                                  f"problems, or indices outside 0..{num_problems - 1}")
        self.num_problems, self.stages, self.seed, self.inner = num_problems, stages, seed, inner

    def stage(self, iteration: int) -> int:
        """Index of the stage that `iteration` belongs to."""
        return max(j for j, (start, _) in enumerate(self.stages) if start <= iteration)

    def sample(self, iteration: int, count: int) -> list[int]:
        j = self.stage(iteration)
        start, allowed = self.stages[j]
        if self.inner is not None:
            return self.inner.sample(iteration, count, allowed)
        key = f"{self.seed}-curriculum-{j}"
        positions = epoch_sample(len(allowed), key, (iteration - start) * count, count)
        return [allowed[p] for p in positions]

    def probabilities(self, iteration: int) -> list[float]:
        """[N] the distribution of one draw at `iteration`: 0 outside the current stage."""
        allowed = self.stages[self.stage(iteration)][1]
        if self.inner is not None:
            return self.inner.probabilities(iteration, allowed)
        probs = [0.0] * self.num_problems
        for i in allowed:
            probs[i] = 1.0 / len(allowed)
        return probs

    def update(self, indices: list[int], success: list[float]) -> None:
        if self.inner is not None:
            self.inner.update(indices, success)

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict()} if self.inner is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.inner is not None:
            self.inner.load_state_dict(state.get("inner", {}))


class CurriculumStage(Section):
    """Problems allowed from `start_iteration` on: min <= difficulty <= max (None = no bound)."""

    start_iteration: int = Field(0, ge=0, description="first RL iteration of this stage")
    min_difficulty: float | str | None = Field(
        None, description="lowest difficulty allowed: a number or a difficulty_order label (None: no bound)")
    max_difficulty: float | str | None = Field(
        None, description="highest difficulty allowed: a number or a difficulty_order label (None: no bound)")


class SamplerConfig(Section):
    """Which problems each RL iteration draws (module docstring); report §2.3.4."""

    kind: Literal["uniform", "curriculum", "prioritized", "curriculum+prioritized"] = Field(
        "uniform", description="how each iteration draws its prompts (report §2.3.4)")
    # e.g. the report's ablation: [{start_iteration: 0}, {start_iteration: 24, min_difficulty: 4}]
    stages: list[CurriculumStage] = Field(
        default_factory=list, description="curriculum stages: the difficulties allowed from each start_iteration on")
    difficulty_order: list[str] = Field(default_factory=list, description="difficulty labels, easiest first")
    floor: float = Field(0.05, ge=0.0, le=1.0, description="prioritized: P(i) ∝ max(1 - s_i, floor) (report: 0)")
    prior: float = Field(0.5, ge=0.0, le=1.0, description="prioritized: success rate s_i before any observation")
    prior_from_pass_rate: bool = Field(True, description="a row's `pass_rate` (curate) overrides prior")
    ema: float | None = Field(
        None, gt=0.0, le=1.0,
        description="s <- (1 - ema) s + ema x per observation; None: the mean of all observations")

    @model_validator(mode="after")
    def _curriculum_has_stages(self) -> SamplerConfig:
        if "curriculum" in self.kind and not self.stages:
            raise ValueError(f"sampler kind {self.kind!r} needs `stages`")
        starts = [s.start_iteration for s in self.stages]
        if self.stages and (starts[0] != 0 or starts != sorted(set(starts))):
            raise ValueError(f"stage start_iteration values must begin at 0 and increase, "
                             f"got {starts}")
        return self


def difficulty_rank(value: float | str | None, order: list[str]) -> float:
    """A difficulty as a number: numbers as they are, labels by their place in `order`.

    >>> difficulty_rank(2, []), difficulty_rank("3", []), difficulty_rank("hard", ["easy", "hard"])
    (2.0, 3.0, 1.0)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value in order:
        return float(order.index(value))
    if isinstance(value, str):   # a number written as text
        try:
            return float(value)
        except ValueError:
            pass
    raise OpenK1Error(f"difficulty {value!r} is neither a number nor a label in "
                      f"sampler.difficulty_order {order}")


def curriculum_stages(cfg: SamplerConfig, problems: list[Problem]) -> list[tuple[int, list[int]]]:
    """cfg.stages -> (start_iteration, indices of the problems whose difficulty is in range)."""
    ranks = []
    for i, problem in enumerate(problems):
        try:
            ranks.append(difficulty_rank(problem.difficulty, cfg.difficulty_order))
        except OpenK1Error as exc:
            raise OpenK1Error(f"curriculum sampling: problem {problem.id or i}: {exc}") from None
    stages = []
    for stage in cfg.stages:
        lo = _bound(stage.min_difficulty, -math.inf, cfg.difficulty_order)
        hi = _bound(stage.max_difficulty, math.inf, cfg.difficulty_order)
        stages.append((stage.start_iteration, [i for i, r in enumerate(ranks) if lo <= r <= hi]))
    return stages


def _bound(value: float | str | None, default: float, order: list[str]) -> float:
    return default if value is None else difficulty_rank(value, order)


def priors(cfg: SamplerConfig, problems: list[Problem]) -> list[float]:
    """[N] initial success rates: a problem's `pass_rate` field if present and used, else prior."""
    values = []
    for i, problem in enumerate(problems):
        rate = problem.extra.get("pass_rate") if cfg.prior_from_pass_rate else None
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                                 or not 0.0 <= rate <= 1.0):
            raise OpenK1Error(f"problem {problem.id or i}: pass_rate must be a number in "
                              f"[0, 1], got {rate!r}")
        values.append(cfg.prior if rate is None else float(rate))
    return values


def _prioritized(cfg: SamplerConfig, problems: list[Problem], seed: int) -> PrioritizedSampler:
    return PrioritizedSampler(priors(cfg, problems), seed, cfg.floor, cfg.ema)


SAMPLERS: dict[str, Callable[[SamplerConfig, list[Problem], int], Sampler]] = {
    "uniform": lambda cfg, problems, seed: UniformSampler(len(problems), seed),
    "prioritized": _prioritized,
    "curriculum": lambda cfg, problems, seed: CurriculumSampler(
        len(problems), curriculum_stages(cfg, problems), seed),
    "curriculum+prioritized": lambda cfg, problems, seed: CurriculumSampler(
        len(problems), curriculum_stages(cfg, problems), seed, _prioritized(cfg, problems, seed)),
}


def make_sampler(cfg: SamplerConfig, problems: list[Problem], seed: int) -> Sampler:
    """The sampler `cfg.kind` names, over `problems` (indices into that list)."""
    return SAMPLERS[cfg.kind](cfg, problems, seed)


def sampler_metrics(sampler: Sampler, iteration: int) -> dict[str, float]:
    """exp(entropy) of one draw's distribution (N when uniform), its largest probability."""
    probs = torch.tensor(sampler.probabilities(iteration), dtype=torch.float64, device="cpu")
    entropy = -float((probs * probs.clamp_min(TINY_WEIGHT).log()).sum())
    metrics = {"sampler/effective_problems": math.exp(entropy),
               "sampler/max_prob": float(probs.max())}
    if isinstance(sampler, CurriculumSampler):
        metrics["sampler/stage"] = float(sampler.stage(iteration))
    return metrics
