"""Rows -> token examples -> packed rows -> a batch whose examples cannot see each other.

An `Example` is token ids [n] and `action_mask` [n]: a token is trained (predicted from the
tokens before it) where the mask is 1, the convention SFT, DPO and RL share. Pretraining
`text` rows train every token; `prompt`+`response` and `messages` rows train the response
(assistant) tokens only. Several examples share one packed row of at most `max_len` tokens;
`collate` gives each its own positions (restarting at 0) and a segment id, and
`block_causal_mask` lets a token attend only to earlier tokens of its own example, so a packed
example's logits equal those of the example run alone.

Images (docs/vision.md "SFT and pretraining with images"): a row's `images` are read when the row
is (`with_images`); for a vision-language model (a tokenizer carrying its processor, models/io.py)
each `<image>` token becomes the processor's expansion of it (16 `<image>` tokens for the tiny
LLaVA), never trained, and the Example keeps its ImageRefs and where their tokens lie (`spans`).
Packing moves whole examples, so an image's tokens are never split; the over-long rule cuts only
outside them (`fit_length`); `collate` gives the batch's `pixel_values`, in reading order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from openk1.data.images import (
    IMAGE_TOKEN,
    ImageRef,
    data_dir,
    image_token_id,
    image_tokens,
    messages_images,
    pixel_values,
    place_images,
    resolve_images,
)
from openk1.errors import OpenK1Error
from openk1.models.io import processor_of
from openk1.models.prompting import prompt_ids, turn_end_id

OverlongRule = Literal["truncate", "drop", "split"]


@dataclass
class Example:
    ids: list[int]            # [n] token ids
    action_mask: list[int]    # [n] 1 = trained token; the first token is never trained
    cut: bool = False         # the response was cut to max_response_tokens (counted as truncated)
    images: tuple[ImageRef, ...] = ()         # the example's images, in the order of their tokens
    spans: tuple[tuple[int, int], ...] = ()   # [start, end) of each image's tokens in `ids`


def with_images(row: dict[str, Any], where: str) -> dict[str, Any]:
    """`row` with its images read (images.py): `images` (paths relative to the data file's folder,
    or data URIs) as ImageRefs, the `<image>` markers of its `prompt` / `text` placed
    (`place_images`), or `messages` content parts normalised with their images in `images`. A row
    without images, or one already read (the `messages` preset), is returned as it is."""
    images = row.get("images")
    if images is not None and all(isinstance(i, ImageRef) for i in images):
        return row
    messages = row.get("messages")
    if isinstance(messages, list) and any(isinstance(m, dict) and isinstance(m.get("content"), list)
                                          for m in messages):
        if images is not None:
            raise OpenK1Error(f"{where}: a `messages` row takes its images from image content parts, not `images`")
        turns, refs = messages_images(messages, data_dir(where), where)
        return {**row, "messages": turns, "images": refs}
    if images is None:
        return row
    refs = resolve_images(images, data_dir(where), where)
    key = next((k for k in ("prompt", "text") if isinstance(row.get(k), str)), "")
    placed = {key: place_images(row[key], len(refs), where)} if key else {}
    return {**row, **placed, "images": refs}


def encode_row(row: dict[str, Any], tokenizer: Any, max_response_tokens: int = 0) -> Example:
    """One dataset row as an Example: `text` (every token trained), `prompt` + `response`
    (response + its end token trained; the prompt in the tokenizer's prompt format, as the
    rollout engine encodes it: models/prompting.py) or `messages` (assistant turns trained; the
    tokenizer's chat template when it has one). For a VLM the row's images (read by
    `with_images`) are expanded in place (`expand_images`); a text model refuses images."""
    processor = processor_of(tokenizer)
    images = tuple(row.get("images") or ())
    if processor is None:
        if images:
            raise OpenK1Error("the row has images, but the model is a text model (use a vision-language model: "
                              "`openk1 init-model --set vision=true`)")
        return _encode_text(row, tokenizer, max_response_tokens)
    if not all(isinstance(i, ImageRef) for i in images):
        raise OpenK1Error("the row's images are not read yet (data/packing.py with_images)")
    return expand_images(_encode_text(row, tokenizer, max_response_tokens), images, processor)


def expand_images(example: Example, images: tuple[ImageRef, ...], processor: Any) -> Example:
    """`example` with its i-th `<image>` token replaced by the processor's expansion of image i
    (`image_tokens`), those tokens untrained, and their spans; as many `<image>` tokens as images
    or an error (a literal `<image>` in a text or a response is one)."""
    image_id = image_token_id(processor)
    at = [i for i, t in enumerate(example.ids) if t == image_id]
    if len(at) != len(images):
        raise OpenK1Error(f"{len(at)} {IMAGE_TOKEN} token{'s' * (len(at) != 1)} for {len(images)} "
                          f"image{'s' * (len(images) != 1)} (images go where the prompt's markers are; "
                          f"a text or response may not hold {IMAGE_TOKEN})")
    ids: list[int] = []
    mask: list[int] = []
    spans: list[tuple[int, int]] = []
    prev = 0
    for pos, ref in zip(at, images):
        ids, mask = ids + example.ids[prev:pos], mask + example.action_mask[prev:pos]
        tokens = image_tokens(processor, ref)
        spans.append((len(ids), len(ids) + len(tokens)))
        ids, mask, prev = ids + list(tokens), mask + [0] * len(tokens), pos + 1
    ids, mask = ids + example.ids[prev:], mask + example.action_mask[prev:]
    return replace(example, ids=ids, action_mask=mask, images=images, spans=tuple(spans))


def _encode_text(row: dict[str, Any], tokenizer: Any, max_response_tokens: int) -> Example:
    """encode_row's tokens, each `<image>` still one token."""
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


def _encode_messages(messages: list[dict[str, Any]], tokenizer: Any) -> Example:
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
            new = tokenizer(_text(message["content"]), add_special_tokens=not ids)["input_ids"]
            new = new + [tokenizer.eos_token_id] if trained else new
        ids, mask = ids + new, mask + [int(trained)] * len(new)
    if not ids:
        raise OpenK1Error("`messages` is empty")
    mask[0] = 0
    return Example(ids, mask)


def _text(content: str | list[dict[str, Any]]) -> str:
    """A turn's text: its content, or its content parts' texts with `<image>` for each image part."""
    if isinstance(content, str):
        return content
    return "".join(part["text"] if part.get("type") == "text" else IMAGE_TOKEN for part in content)


def _template(tokenizer: Any, messages: list[dict[str, Any]], generation_prompt: bool) -> list[int]:
    if not messages:
        return []
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def fit_length(example: Example, max_len: int, rule: OverlongRule) -> tuple[list[Example], str]:
    """Apply the over-long rule: (examples to keep, "ok" | "truncated" | "dropped" | "split").
    `split` cuts into max_len chunks (pretraining text); a chunk's first token is not trained.
    No cut falls inside an image's tokens: it moves back to the image's start (the image goes to
    the next chunk, or is truncated away); an image longer than max_len drops the example."""
    if max_len <= 0 or len(example.ids) <= max_len:
        return [example], "truncated" if example.cut else "ok"
    if rule == "drop" or any(end - start > max_len for start, end in example.spans):
        return [], "dropped"
    if rule == "truncate":
        return [_piece(example, 0, _cut(example, max_len), trained_first=True)], "truncated"
    chunks, start = [], 0
    while start < len(example.ids):
        end = _cut(example, start + max_len)
        chunks.append(_piece(example, start, end, trained_first=False))
        start = end
    return [c for c in chunks if len(c.ids) > 1], "split"


def _cut(example: Example, end: int) -> int:
    """`end`, moved back to the start of the image whose tokens it would cut."""
    return next((start for start, stop in example.spans if start < end < stop), min(end, len(example.ids)))


def _piece(example: Example, start: int, end: int, trained_first: bool) -> Example:
    """Tokens start..end-1 of `example` with the images lying wholly inside (spans rebased);
    the first token's mask kept only with `trained_first`."""
    inside = [i for i, (a, b) in enumerate(example.spans) if start <= a and b <= end]
    mask = example.action_mask[start:end]
    return Example(example.ids[start:end], mask if trained_first else [0] + mask[1:],
                   images=tuple(example.images[i] for i in inside),
                   spans=tuple((example.spans[i][0] - start, example.spans[i][1] - start) for i in inside))


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


def collate(rows: list[list[Example]], pad_id: int, processor: Any = None) -> dict[str, torch.Tensor]:
    """Packed rows -> input_ids, action_mask, position_ids, segment_ids, all [B, L] with L the
    longest row; segment_ids number the examples of a row 1, 2, ... (0 = padding). With images:
    pixel_values [n, 3, H, W] of the rows' images in reading order (row by row, example by
    example), from `processor` (the VLM's)."""
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
    images = [ref for row in rows for example in row for ref in example.images]
    if images:
        if processor is None:
            raise OpenK1Error("a batch with images needs the model's processor (a vision-language model)")
        batch["pixel_values"] = pixel_values(processor, images)
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
