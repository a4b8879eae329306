"""The typed records that flow through openk1: Problem -> Rollout -> Batch.

Shape symbols used across the code base:
    B  number of sequences in a batch (prompts x samples_per_prompt)
    P  prompt length (left-padded),  T  response length (right-padded),  L = P + T
    V  vocabulary size,  k  samples per prompt
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from openk1.data.images import ImageRef

ProblemType = Literal["math", "code", "freeform"]
PROBLEM_TYPES: tuple[str, ...] = ("math", "code", "freeform")

StopReason = Literal["normal", "max_tokens", "budget", "repeat"]


@dataclass(frozen=True)
class Problem:
    """One dataset row (docs/stages.md "Dataset rows"); `extra` keeps every other input field.
    `images`: the row's images, read and checked at load time, in the order of the prompt's
    `<image>` markers (docs/data.md "Rows with images"; data/images.py)."""

    prompt: str
    answer: str
    type: ProblemType = "math"
    id: str = ""
    domain: str = ""
    tags: tuple[str, ...] = ()
    difficulty: float | int | str | None = None
    tests: tuple[dict[str, Any], ...] = ()
    solutions: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    images: tuple[ImageRef, ...] = ()


@dataclass
class Rollout:
    """What the rollout engine returns for B sequences; it knows nothing about rewards.

    prompt_ids   [B, P]  left-padded prompt tokens
    prompt_mask  [B, P]  1 on real prompt tokens
    response_ids [B, T]  sampled tokens, right-padded with pad_token_id
    action_mask  [B, T]  1 on generated tokens (including the EOS that ended a response)
    logp         [B, T]  log pi(token) under the policy that sampled it (0 where mask is 0)
    stop_reason  B strings: "normal" (EOS) | "max_tokens" | "budget" (cut, to be continued) |
                 "repeat" (rollout/hf.py)
    versions     [B, T]  policy version (RL iteration) that sampled each token, -1 where mask
                 is 0; None from the engine (rollout/partial.py fills it in)
    images       B tuples: each row's prompt images (`<image>` tokens in prompt_ids, in order);
                 None when no row has any (a text rollout)
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    action_mask: torch.Tensor
    logp: torch.Tensor
    stop_reason: list[str]
    texts: list[str] = field(default_factory=list)
    versions: torch.Tensor | None = None
    images: list[tuple[ImageRef, ...]] | None = None

    @property
    def lengths(self) -> torch.Tensor:
        """[B] number of generated tokens of each response."""
        return self.action_mask.sum(-1)
