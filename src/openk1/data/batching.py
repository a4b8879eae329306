"""Turn (prompt, response) text pairs into the shared batch layout: a token is trained where
`action_mask` is 1 (the same convention for SFT, DPO and RL)."""

from __future__ import annotations

from typing import Any

import torch

from openk1.models.forward import encode_prompts
from openk1.models.prompting import turn_end_id
from openk1.padding import pad


def encode_responses(tokenizer: Any, responses: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Right-padded response ids [B, T] ending in EOS, action_mask [B, T], and how many were
    truncated to `max_tokens` (those lose their EOS: the model is not taught to stop there)."""
    end = turn_end_id(tokenizer)   # EOS, or the chat template's end of turn (models/prompting.py)
    encoded = [tokenizer(r, add_special_tokens=False)["input_ids"] + [end] for r in responses]
    truncated = sum(len(ids) > max_tokens for ids in encoded)
    ids, mask = pad([ids[:max_tokens] for ids in encoded], tokenizer.pad_token_id)
    return ids, mask, truncated


def encode_pairs(tokenizer: Any, prompts: list[str], responses: list[str],
                 max_response_tokens: int) -> dict[str, Any]:
    """The batch dict for an SFT/DPO step: prompt_ids/prompt_mask [B, P], response_ids/action_mask [B, T]."""
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
    response_ids, action_mask, truncated = encode_responses(tokenizer, responses, max_response_tokens)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "response_ids": response_ids,
            "action_mask": action_mask, "truncated": truncated}
