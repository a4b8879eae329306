"""The one rollout-engine interface: HFEngine (rollout/hf.py), VLLMEngine (rollout/vllm_engine.py),
ShardedEngine (distributed/rollout.py) and the Ray proxy RayEngine (stages/rl_ray.py).

    tokenizer                            the engine's tokenizer (prompt ids, pad id, decoding)
    sample(requests) -> Rollout          row i answers requests[i]: tokens, action mask, per-token
                                         log-probs, stop reason; a request may continue a prefix
                                         under a token budget (partial rollouts, report §2.6.2)
    generate(prompts, k, seed) -> Rollout
                                         k samples of each prompt, grouped: sample(requests_for(..))
    load_weights(state)                  the next policy's weights (HF parameter names), sent by
                                         the trainer to its rollout workers (report §2.6.1)
    sleep() / wake_up()                  give up / take back accelerator memory between rollouts,
                                         so that rollout and training share the devices (hybrid
                                         deployment, report §2.6.3); a no-op where nothing is held
    close()                              release what the engine holds (hooks, workers)

An engine knows nothing about rewards or losses; a stage takes any engine through
`EngineFactory` (rl) or a `SamplingConfig -> RolloutEngine` callable (curate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from openk1.data.images import ImageRef
from openk1.models.forward import tokenize
from openk1.models.vlm import prompt_tokens
from openk1.types import Rollout


@dataclass(frozen=True)
class Request:
    """One response to sample, or to continue after `prefix`. `images`: the prompt's, in the order
    of its `<image>` tokens, each already expanded to its token count (models/vlm.py
    prompt_tokens); only a vision-language model's engine takes them (rollout/hf.py)."""

    prompt_ids: tuple[int, ...]
    stream: tuple[int, int]                  # (seed, sequence number): its random stream
    prefix: tuple[int, ...] = ()             # response tokens sampled earlier (by any policy)
    budget: int | None = None                # tokens this call may add; None: up to max_new_tokens
    images: tuple[ImageRef, ...] = ()


@runtime_checkable
class RolloutEngine(Protocol):
    """Prompts in; tokens, action mask, per-token log-probs and stop reasons out (module doc)."""

    @property
    def tokenizer(self) -> Any: ...

    def sample(self, requests: list[Request]) -> Rollout: ...

    def generate(self, prompts: list[str], samples_per_prompt: int, seed: int) -> Rollout: ...

    def load_weights(self, state: dict[str, torch.Tensor]) -> None: ...

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...

    def close(self) -> None: ...


# (policy model, its Hugging Face tokenizer) -> the RL stage's engine (HF's tokenizers are untyped)
EngineFactory = Callable[[torch.nn.Module, Any], RolloutEngine]


def requests_for(tokenizer: Any, prompts: list[str], samples_per_prompt: int, seed: int,
                 images: list[tuple[ImageRef, ...]] | None = None) -> list[Request]:
    """The requests of `generate`: row r samples prompts[r // k] with random stream (seed, r).
    `images[i]`: prompts[i]'s images (its `<image>` markers expanded through the processor on the
    tokenizer, models/vlm.py prompt_tokens).

    >>> chars = lambda text, add_special_tokens: {"input_ids": [ord(c) for c in text]}
    >>> [(r.prompt_ids, r.stream) for r in requests_for(chars, ["a", "b"], 2, seed=7)]
    [((97,), (7, 0)), ((97,), (7, 1)), ((98,), (7, 2)), ((98,), (7, 3))]
    """
    k = samples_per_prompt
    if not images or not any(images):
        ids = [tuple(p) for p in tokenize(tokenizer, prompts)]
        return [Request(ids[r // k], (seed, r)) for r in range(len(prompts) * k)]
    ids = [tuple(prompt_tokens(tokenizer, p, i)) for p, i in zip(prompts, images, strict=True)]
    return [Request(ids[r // k], (seed, r), images=images[r // k]) for r in range(len(prompts) * k)]
