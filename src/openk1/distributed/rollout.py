"""Rollouts split across torchrun ranks: each rank generates its share of the sequences.

`ShardedEngine(engine)` is itself a RolloutEngine (rollout/engine.py):

    sample(requests) -> Rollout           rank r samples its contiguous share of the requests
    generate(prompts, k, seed) -> Rollout the requests of `requests_for`, then sample()
    load_weights / sleep / wake_up / close   passed to the wrapped engine

and all-gathers the shares, so every rank gets the whole Rollout in request order and the rest
of the iteration (rewards, advantages, sampler, metrics) sees what one process would see;
`update` then trains each rank on its share of every mini-batch (stages/rl.py).

Because every engine draws each sequence from its own random stream (seed, sequence number)
(rollout/hf.py), the sharded rollout is the one-process rollout: the same tokens whatever the
number of ranks. In one process the wrapped engine is called directly.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import torch

from openk1.distributed import runtime
from openk1.rollout.engine import Request, RolloutEngine, requests_for
from openk1.rollout.hf import concat_rollouts
from openk1.types import Rollout


class ShardedEngine:
    """Wraps a rollout engine: sampling is split across ranks, the rest passes through."""

    def __init__(self, engine: RolloutEngine) -> None:
        self.engine = engine

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def exact_logp(self) -> bool:
        """Whether the wrapped engine's log-probs are the trainer's forward's (vLLM: no)."""
        return bool(getattr(self.engine, "exact_logp", True))

    @property
    def forward_path(self) -> str:
        """The wrapped engine's (rollout/hf.py HFEngine.forward_path), for the run's summary."""
        return str(getattr(self.engine, "forward_path", type(self.engine).__name__))

    def sample(self, requests: list[Request]) -> Rollout:
        if not runtime.is_distributed():
            return self.engine.sample(requests)
        mine = runtime.shard(requests)
        return self._gather(self.engine.sample(mine) if mine else None)

    def generate(self, prompts: list[str], samples_per_prompt: int, seed: int) -> Rollout:
        return self.sample(requests_for(self.tokenizer, prompts, samples_per_prompt, seed))

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.engine.load_weights(state)

    def sleep(self) -> None:
        self.engine.sleep()

    def wake_up(self) -> None:
        self.engine.wake_up()

    def close(self) -> None:
        self.engine.close()

    def _gather(self, local: Rollout | None) -> Rollout:
        parts = [p for p in runtime.all_gather_objects(None if local is None else _to_cpu(local))
                 if p is not None]
        return concat_rollouts(parts, self.tokenizer.pad_token_id)


def _to_cpu(rollout: Rollout) -> Rollout:
    moved = {f.name: getattr(rollout, f.name).cpu() for f in fields(rollout)
             if isinstance(getattr(rollout, f.name), torch.Tensor)}
    return replace(rollout, **moved)
