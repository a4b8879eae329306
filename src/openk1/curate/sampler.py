"""'k answers per prompt -> rewards' for the model filters, `hack` and `difficulty` (report
§2.1): batched, cached per prompt, resumable. A response counts as right when its reward
(`score_many`, the training verifier) is 1.

The answers come from any rollout engine (rollout/engine.py): `engine_for(sampling)` gives the
engine that samples with a filter's settings (each filter has its own temperature and length).
A problem's images go with its prompt (`requests_for(..., images=...)`: a vision-language model
sees them; docs/vision.md) and into its cache key (their digests), so two problems with the same
text and other images are sampled and cached apart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable

from openk1.curate.rows import Row, alive
from openk1.data.prompt_cache import PromptCache
from openk1.rewards.scoring import VERIFIERS, score_many
from openk1.rollout.engine import RolloutEngine, requests_for
from openk1.rollout.hf import SamplingConfig
from openk1.types import Problem

_KIND_SEED = {"hack": 0, "difficulty": 500_009}   # the two filters draw different seeds


class Sampler:
    """Batched, cached, resumable 'k answers per prompt -> rewards' for one curate run."""

    def __init__(self, engine_for: Callable[[SamplingConfig], RolloutEngine], cache: PromptCache,
                 fingerprint: str, seed: int, prompts_per_batch: int, score_workers: int,
                 progress: bool) -> None:
        self.engine_for, self.cache, self.fingerprint = engine_for, cache, fingerprint
        self.seed, self.per_batch = seed, prompts_per_batch
        self.workers, self.progress = score_workers, progress
        self.stats: dict[str, dict[str, int]] = {}

    def key(self, kind: str, text: str, problem: Problem, k: int, sampling: SamplingConfig) -> str:
        settings = sampling.model_dump(exclude={"batch_size"})
        parts = [kind, text, problem.type, problem.answer, list(problem.tests), self.fingerprint,
                 settings, k, self.seed, self.per_batch]
        if problem.images:   # (text problems keep the keys they had)
            parts.append([ref.digest for ref in problem.images])
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def rewards(self, kind: str, problems: list[Problem], texts: list[str], k: int,
                sampling: SamplingConfig) -> list[list[float]]:
        """k rewards per prompt. Batches are fixed slices of the full list and batch b is seeded
        by (seed, kind, b), so a resumed run regenerates exactly the batches an uninterrupted
        run would have, with the same seeds."""
        from tqdm import tqdm

        keys = [self.key(kind, t, p, k, sampling) for t, p in zip(texts, problems)]
        results = [self.cache.get(key) for key in keys]
        stats = {"prompts": len(keys), "cached": sum(r is not None for r in results),
                 "generated": 0, "generation_calls": 0}
        starts = range(0, len(keys), self.per_batch)
        for b, start in enumerate(tqdm(starts, desc=f"curate {kind}", unit="batch",
                                       disable=not self.progress or not starts)):
            todo = [i for i in range(start, min(start + self.per_batch, len(keys))) if results[i] is None]
            if not todo:
                continue
            seed = self.seed * 1_000_003 + _KIND_SEED[kind] + b
            engine = self.engine_for(sampling)
            prompts, images = [texts[i] for i in todo], [problems[i].images for i in todo]
            answers = (engine.sample(requests_for(engine.tokenizer, prompts, k, seed, images)).texts
                       if any(images) else engine.generate(prompts, k, seed).texts)
            repeated = [problems[i] for i in todo for _ in range(k)]
            scores = [s.reward for s in score_many(answers, repeated, self.workers)]
            fresh = {keys[i]: scores[j * k:(j + 1) * k] for j, i in enumerate(todo)}
            self.cache.add(fresh)
            for i in todo:
                results[i] = fresh[keys[i]]
            stats["generated"] += len(todo)
            stats["generation_calls"] += 1
        self.stats[kind] = stats
        return [r if r is not None else [] for r in results]


def correct(rewards: Iterable[float]) -> int:
    """Number of right answers (reward 1, the verifier's full credit)."""
    return sum(r >= 1.0 for r in rewards)



def scorable(rows: list[Row]) -> list[Row]:
    """The kept rows a rule-based verifier can score (`freeform` rows skip the model filters)."""
    return [r for r in alive(rows) if r.problem is not None and r.problem.type in VERIFIERS]
