"""Rows -> token examples -> packed rows -> a batch whose examples cannot see each other.

An `Example` is token ids [n] and `action_mask` [n]: a token is trained (predicted from the
tokens before it) where the mask is 1, the convention SFT, DPO and RL share. Pretraining
`text` rows train every token; `prompt`+`response` and `messages` rows train the response
(assistant) tokens only. Several examples share one packed row of at most `max_len` tokens;
`collate` gives each its own positions (restarting at 0) and a segment id, and
`block_causal_mask` lets a token attend only to earlier tokens of its own example, so a packed
example's logits equal those of the example run alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from openk1.errors import OpenK1Error
from openk1.models.prompting import prompt_ids, turn_end_id

OverlongRule = Literal["truncate", "drop", "split"]


@dataclass
class Example:
    ids: list[int]            # [n] token ids
    action_mask: list[int]    # [n] 1 = trained token; the first token is never trained
    cut: bool = False         # the response was cut to max_response_tokens (counted as truncated)


def encode_row(row: dict[str, Any], tokenizer: Any, max_response_tokens: int = 0) -> Example:
    """One dataset row as an Example: `text` (every token trained), `prompt` + `response`
    (response + its end token trained; the prompt in the tokenizer's prompt format, as the
    rollout engine encodes it: models/prompting.py) or `messages` (assistant turns trained; the
    tokenizer's chat template when it has one)."""
    if isinstance(row.get("text"), str):
        ids = tokenizer(row["text"], add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
        return Example(ids, [0] + [1] * (len(ids) - 1))
    if isinstance(row.get("messages"), list):
        return _encode_messages(row["messages"], tokenizer)
    if isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str):
        prompt = prompt_ids(tokenizer, row["prompt"])
        response = tokenizer(row["response"], add_special_tokens=False)["input_ids"] + [turn_end_id(tokenizer)]
        cut = 0 < max_response_tokens < len(response)
        response = response[:max_response_tokens] if cut else response
        return Example(prompt + response, [0] * len(prompt) + [1] * len(response), cut)
    raise OpenK1Error("row needs `text`, `prompt` + `response`, or `messages`")


def _encode_messages(messages: list[dict[str, str]], tokenizer: Any) -> Example:
    """Assistant turns trained. With a chat template the tokens of turn i are
    template(messages[:i+1]) minus template(messages[:i], generation prompt); without one,
    user/system text is context and each assistant text is followed by EOS."""
    ids: list[int] = []
    mask: list[int] = []
    templated = bool(getattr(tokenizer, "chat_template", None))
    for i, message in enumerate(messages):
        trained = message["role"] == "assistant"
        if templated:
            if trained:      # the assistant header is context, the reply is trained
                header = _template(tokenizer, messages[:i], generation_prompt=True)[len(ids):]
                ids, mask = ids + header, mask + [0] * len(header)
            new = _template(tokenizer, messages[:i + 1], generation_prompt=False)[len(ids):]
        else:
            new = tokenizer(message["content"], add_special_tokens=not ids)["input_ids"]
            new = new + [tokenizer.eos_token_id] if trained else new
        ids, mask = ids + new, mask + [int(trained)] * len(new)
    if not ids:
        raise OpenK1Error("`messages` is empty")
    mask[0] = 0
    return Example(ids, mask)


def _template(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    if not messages:
        return []
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def fit_length(example: Example, max_len: int, rule: OverlongRule) -> tuple[list[Example], str]:
    """Apply the over-long rule: (examples to keep, "ok" | "truncated" | "dropped" | "split").
    `split` cuts into max_len chunks (pretraining text); a chunk's first token is not trained."""
    if max_len <= 0 or len(example.ids) <= max_len:
        return [example], "truncated" if example.cut else "ok"
    if rule == "drop":
        return [], "dropped"
    if rule == "truncate":
        return [Example(example.ids[:max_len], example.action_mask[:max_len])], "truncated"
    chunks = [Example(example.ids[s:s + max_len], [0] + example.action_mask[s + 1:s + max_len])
              for s in range(0, len(example.ids), max_len)]
    return [c for c in chunks if len(c.ids) > 1], "split"


def pack(examples: list[Example], max_len: int) -> list[list[Example]]:
    """Next-fit packing in order: a row is closed when the next example does not fit.

    >>> [[len(e.ids) for e in row] for row in pack([Example([1] * n, [0] * n) for n in (3, 2, 4, 1)], 5)]
    [[3, 2], [4, 1]]
    """
    rows: list[list[Example]] = []
    used = max_len + 1
    for example in examples:
        if len(example.ids) > max_len:
            raise OpenK1Error(f"example of {len(example.ids)} tokens > max_len {max_len} (apply fit_length first)")
        if used + len(example.ids) > max_len:
            rows.append([])
            used = 0
        rows[-1].append(example)
        used += len(example.ids)
    return rows


def collate(rows: list[list[Example]], pad_id: int) -> dict[str, torch.Tensor]:
    """Packed rows -> input_ids, action_mask, position_ids, segment_ids, all [B, L] with L the
    longest row; segment_ids number the examples of a row 1, 2, ... (0 = padding)."""
    width = max(sum(len(e.ids) for e in row) for row in rows)
    shape = (len(rows), width)
    batch = {"input_ids": torch.full(shape, pad_id, dtype=torch.long, device="cpu"),
             **{k: torch.zeros(shape, dtype=torch.long, device="cpu")
                for k in ("action_mask", "position_ids", "segment_ids")}}
    for b, row in enumerate(rows):
        start = 0
        for segment, example in enumerate(row, start=1):
            n = len(example.ids)
            batch["input_ids"][b, start:start + n] = torch.tensor(example.ids, device="cpu")
            batch["action_mask"][b, start:start + n] = torch.tensor(example.action_mask, device="cpu")
            batch["action_mask"][b, start] = 0            # never predicted across examples
            batch["position_ids"][b, start:start + n] = torch.arange(n, device="cpu")
            batch["segment_ids"][b, start:start + n] = segment
            start += n
    return batch


def block_causal_mask(segment_ids: torch.Tensor, kind: Literal["bool", "float"] = "bool") -> torch.Tensor:
    """[B, 1, L, L] mask: query i sees key j iff j <= i and both lie in the same example.

    Padding (segment 0) sees earlier padding only, so no row of the mask is empty. "bool": True =
    attend (SDPA); "float": 0 = attend, dtype minimum = blocked (eager attention adds it).
    """
    L = segment_ids.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = (segment_ids[:, :, None] == segment_ids[:, None, :]) & causal      # [B, L, L]
    if kind == "bool":
        return allowed[:, None]
    blocked = torch.full(allowed.shape, torch.finfo(torch.float32).min, device=segment_ids.device)
    return torch.where(allowed, 0.0, blocked)[:, None]
