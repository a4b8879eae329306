"""Model forward passes shared by rollout, SFT, RL and DPO: [prompt | response] -> log-probs.

Layout: prompts are left-padded [B, P], responses right-padded [B, T]; the concatenation
[B, L = P + T] keeps every real token contiguous, so position ids are a cumulative sum of the
attention mask and one forward pass scores every response token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from openk1.algo.logprobs import token_logprobs
from openk1.data.images import ImageRef
from openk1.errors import OpenK1Error
from openk1.models.lean import LeanModel, unsupported_reason
from openk1.models.prompting import prompt_ids
from openk1.padding import pad

# compute dtype (None: the parameters'); a stage resolves "auto" first (runtime.compute_precision)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "auto": None}
VISION_PATH = "vision-language model: image features as input embeddings"   # forward_path of a VLM


def tokenize(tokenizer: Any, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt in the tokenizer's prompt format (models/prompting.py)."""
    return [prompt_ids(tokenizer, p) for p in prompts]


def encode_prompts(tokenizer: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids [B, P] and mask [B, P] (special tokens as the tokenizer adds them)."""
    return pad(tokenize(tokenizer, prompts), tokenizer.pad_token_id, side="left")


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] positions counting real tokens only (pads get 0)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def trim(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
         action_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop prompt columns that are padding in every row and response columns past the longest."""
    first = int((prompt_mask.sum(0) > 0).nonzero()[0]) if prompt_mask.any() else 0
    width = int(action_mask.sum(-1).max()) if action_mask.any() else 1
    return (prompt_ids[:, first:], prompt_mask[:, first:],
            response_ids[:, :width], action_mask[:, :width])


def response_logprobs(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                      response_ids: torch.Tensor, action_mask: torch.Tensor,
                      chunk_size: int | None = None, dtype: torch.dtype | None = None,
                      compile: bool = False, lean: bool = True, temperature: float = 1.0,
                      images: Sequence[tuple[ImageRef, ...]] | None = None, processor: Any = None) -> torch.Tensor:
    """log pi_T(response token | prefix) for every response position, [B, T] (0 where masked),
    pi_T = softmax(logits / temperature).

    prompt_ids/prompt_mask [B, P] (left-padded), response_ids/action_mask [B, T] (right-padded).
    Llama-family models run on models/lean.py's forward (`lean`, the default: fewer elementwise
    passes and less memory than HF's, same result to fp32 rounding); others, or lean=False, on
    HF's. `dtype` (default: the parameters') is the compute dtype: bfloat16 is mixed precision
    (fp32 parameters, gradients and log-probs; bf16 matmuls), under torch.autocast on HF's
    forward. `compile`: the lean layers through torch.compile (models/lean.py compiled_layer).
    `temperature` (> 0): RL passes its sampling temperature, so that log pi_theta is that of the
    tempered distribution the rollout sampled and recorded (rollout/hf.py); SFT, DPO and scoring
    keep 1. `images` [B] (each row's, models/vlm.py) with the VLM's `processor`: a batch with
    images is scored by `vision_logprobs`.
    """
    if images is not None and any(images):
        return vision_logprobs(model, processor, prompt_ids, prompt_mask, response_ids, action_mask, images,
                               chunk_size=chunk_size, dtype=dtype, temperature=temperature)
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)            # [B, L]
    attention_mask = torch.cat([prompt_mask, action_mask], dim=1)       # [B, L]
    T = response_ids.shape[1]
    mixed = dtype is not None and dtype != next(model.parameters()).dtype
    fast = LeanModel.of(model, dtype, compile) if lean or compile else None
    if fast is not None:
        logits = fast.logits(input_ids, attention_mask, position_ids(attention_mask), keep=T + 1)[:, :-1]
        return token_logprobs(logits, response_ids, chunk_size=chunk_size, temperature=temperature) * action_mask
    if mixed:
        with torch.autocast(input_ids.device.type, dtype=dtype):
            return response_logprobs(model, prompt_ids, prompt_mask, response_ids, action_mask, chunk_size,
                                     lean=False, temperature=temperature)
    # Only positions P-1 .. L-2 score a response token: the LM head runs on the last T + 1
    # positions, not on the prompt's (`logits_to_keep`, where the model accepts it).
    keep = {"logits_to_keep": T + 1} if _accepts(model, "logits_to_keep") else {}
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids(attention_mask), use_cache=False, **keep)
    logits = out.logits[:, -(T + 1):-1]                                 # [B, T, V]
    return token_logprobs(logits, response_ids, chunk_size=chunk_size, temperature=temperature) * action_mask


def vision_logprobs(model: Any, processor: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                    response_ids: torch.Tensor, action_mask: torch.Tensor, images: Sequence[tuple[ImageRef, ...]],
                    chunk_size: int | None = None, dtype: torch.dtype | None = None,
                    temperature: float = 1.0) -> torch.Tensor:
    """`response_logprobs` of a VLM batch whose rows have images (images[b]: row b's, () for a
    text row): the features of each distinct image of the batch computed once (one vision-tower
    call, with gradients through the tower and projector where they require grad), scattered into
    each row's first image tokens (models/vlm.py `scatter`), one HF forward over the embeddings
    (the lean forward is text only). As models/vision.py vlm_response_logprobs(features=...),
    which it equals, but with the images given per row and a shared image's features shared."""
    from openk1.models.vlm import row_features, scatter

    if processor is None:
        raise OpenK1Error("scoring rows with images needs the model's processor (models/vlm.py processor_of)")
    if dtype is not None and dtype != next(model.parameters()).dtype:
        with torch.autocast(prompt_ids.device.type, dtype=dtype):
            return vision_logprobs(model, processor, prompt_ids, prompt_mask, response_ids, action_mask, images,
                                   chunk_size=chunk_size, temperature=temperature)
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)            # [B, L]
    attention_mask = torch.cat([prompt_mask, action_mask], dim=1)       # [B, L]
    T = response_ids.shape[1]
    embeds = scatter(model, input_ids, row_features(model, processor, images))
    out = model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                use_cache=False, logits_to_keep=T + 1)
    logits = out.logits[:, -(T + 1):-1]                                 # [B, T, V]
    return token_logprobs(logits, response_ids, chunk_size=chunk_size, temperature=temperature) * action_mask


def _accepts(model: Any, name: str) -> bool:
    import inspect

    return name in inspect.signature(model.forward).parameters


def cached_forward(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   cache: Any = None, inputs_embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
    """Logits of the last position [B, V] and the updated KV cache (`full_cache` at first).

    input_ids [B, n] are the new tokens (the whole prompt on the first call), attention_mask
    [B, P + t] covers every token so far. `inputs_embeds` [B, n, d], when given, are fed instead
    of the ids' embeddings (a VLM's prompt with its image features; models/vlm.py). Transformers
    5 names the cache `cache`; 4.x named it `past_key_values`: both are accepted.
    """
    name = _cache_arg(model)
    device = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    n = input_ids.shape[1]
    inputs = {"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds.to(device)}
    out = model(**inputs, attention_mask=attention_mask,
                position_ids=position_ids(attention_mask)[:, -n:], use_cache=True,
                logits_to_keep=1, **{name: cache if cache is not None else full_cache()})
    new_cache = out.cache if hasattr(out, "cache") else out.past_key_values
    return out.logits[:, -1].float(), new_cache


def is_vlm(model: Any) -> bool:
    """Whether `model` is a vision-language model (its config has a `vision_config`)."""
    return getattr(getattr(model, "config", None), "vision_config", None) is not None


def forward_path(model: Any, lean: bool = True) -> str:
    """Which forward pass runs `model` and why: "lean" (models/lean.py) or "hf (<reason>)".

    >>> forward_path(object(), lean=False)
    'hf (lean: false)'
    """
    if is_vlm(model):
        return f"hf ({VISION_PATH})"   # the lean forward is text only
    if not lean:
        return "hf (lean: false)"
    reason = unsupported_reason(model)
    return "lean" if reason is None else f"hf ({reason})"


def rotary_module(model: Any) -> tuple[Any, Any]:
    """(the base model, its rotary embedding module), or (base, None) for a model without RoPE
    (GPT-2's learned positions)."""
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None) or getattr(model, "model", None)
    return base, getattr(base, "rotary_emb", None)


def learned_positions(model: Any) -> int:
    """How many positions a model without RoPE has learned (GPT-2's n_positions); 0: it has
    RoPE, whose length can grow (report §2.2: the context is extended by raising its base)."""
    if rotary_module(model)[1] is not None:
        return 0
    config = model.config
    return int(getattr(config, "n_positions", 0) or getattr(config, "max_position_embeddings", 0) or 0)


def full_cache() -> Any:
    """An empty DynamicCache without the model's config: every layer a full-attention
    DynamicLayer, also for sliding-window (Mistral, Phi-3) and hybrid (Gemma 2/3, Qwen2 with
    `use_sliding_window`) models. Their sliding windows are still applied, by the attention mask
    HF builds for each layer type over the full keys (the window is counted in columns, which
    equal token distances since every row's real tokens are contiguous), so the logits are those
    of a full forward pass, and rows can be dropped and joined (rollout/kv_cache.py). Memory:
    the whole context per layer, as for a full-attention model."""
    from transformers import DynamicCache

    return DynamicCache()


def _cache_arg(model: Any) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@contextmanager
def eval_mode(model: Any) -> Iterator[Any]:
    """Run a block with the model in eval mode, restoring its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
