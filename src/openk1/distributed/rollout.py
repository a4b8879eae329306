"""Rollouts split across torchrun ranks: each rank generates its share of the sequences.

`ShardedEngine(engine)` keeps the rollout-engine interface:

    sample(requests) -> Rollout           rank r samples its contiguous share of the requests
    generate(prompts, k, seed) -> Rollout the requests HFEngine.generate builds, then sample()

and all-gathers the shares, so every rank gets the whole Rollout in request order and the rest
of the iteration (rewards, advantages, sampler, metrics) sees what one process would see;
`update` then trains each rank on its share of every mini-batch (stages/rl.py).

Because HFEngine draws each sequence from its own random stream (seed, sequence number)
(rollout/hf.py), the sharded rollout is the one-process rollout: the same tokens whatever the
number of ranks. An engine without `sample` (vLLM: one seed per call) splits the prompts and
offsets the seed by the rank instead. In one process the wrapped engine is called directly.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import torch

from openk1.dist import runtime
from openk1.models.forward import tokenize
from openk1.rollout.hf import Request, concat_rollouts
from openk1.types import Rollout

RANK_SEED_STRIDE = 1_000_033


class ShardedEngine:
    """Wraps a rollout engine; attributes other than sample/generate pass through."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def sample(self, requests: list[Request]) -> Rollout:
        if not runtime.is_distributed():
            return self.engine.sample(requests)
        mine = runtime.shard(requests)
        return self._gather(self.engine.sample(mine) if mine else None)

    def generate(self, prompts: list[str], samples_per_prompt: int, seed: int) -> Rollout:
        if not runtime.is_distributed():
            return self.engine.generate(prompts, samples_per_prompt, seed)
        if hasattr(self.engine, "sample"):   # per-sequence streams: as HFEngine.generate builds them
            ids = [tuple(p) for p in tokenize(self.engine.tokenizer, prompts)]
            k = samples_per_prompt
            return self.sample([Request(ids[r // k], (seed, r)) for r in range(len(prompts) * k)])
        mine = runtime.shard(prompts)
        local = (self.engine.generate(mine, samples_per_prompt, seed + RANK_SEED_STRIDE * runtime.rank())
                 if mine else None)
        return self._gather(local)

    def _gather(self, local: Rollout | None) -> Rollout:
        parts = [p for p in runtime.all_gather_objects(None if local is None else _to_cpu(local))
                 if p is not None]
        return concat_rollouts(parts, self.engine.tokenizer.pad_token_id)


def _to_cpu(rollout: Rollout) -> Rollout:
    moved = {f.name: getattr(rollout, f.name).cpu() for f in fields(rollout)
             if isinstance(getattr(rollout, f.name), torch.Tensor)}
    return replace(rollout, **moved)
