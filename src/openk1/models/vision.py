"""The tiny vision-language model: a LLaVA (`LlavaForConditionalGeneration`) made of a small CLIP
vision tower, a two-layer projector and the tiny Llama of models/tiny.py; its `LlavaProcessor`;
and the forward passes a VLM stage needs (log-probs with images, generation with a KV cache).

Kimi k1.5 (arXiv 2501.12599) is trained jointly on text and vision data; this module is the
model side of that, on CPU scale. Why LLaVA among transformers' VLM classes:

  - LLaVA: one image = a fixed number of `<image>` tokens (here (32 / 8)^2 = 16), whose input
    embeddings are replaced by the projected patch features; the language model is an ordinary
    `LlamaModel` with 1-D positions, so [prompt | response] batches, left padding, position ids
    = cumsum(mask) and the KV cache work exactly as for the text models (models/forward.py).
    `llava-hf/*` checkpoints (LLaVA 1.5, LLaVA-Interleave) load the same way, and vLLM serves
    the class.
  - Idefics3 / SmolVLM: pixel shuffle and image splitting into sub-images make the token count
    depend on the image size, and the processor inserts row/column marker text: more to mirror
    in a tiny model for no gain in what the stages need to handle.
  - Qwen2-VL / Qwen2.5-VL: the strongest open family, but 3-D rotary positions (`mrope`):
    position ids come from `get_rope_index` over the image grid, not from the mask, so every
    forward path (packing, left padding, decode steps) needs its own position logic. The image
    feature reuse below carries over (`get_image_features` + the placeholder scatter); the
    positions are the part still to be written for it.

Text config: `tiny_llama`'s (so a change of the tiny Llama carries over), vocabulary = the char
tokenizer + one special token `<image>`. Vision: CLIP (a CLS token + patches); the LLaVA-1.5
feature selection `default` drops the CLS token, so the processor's `num_additional_image_tokens`
is 1 and one `<image>` in a prompt expands to (image_size / patch)^2 tokens. `vision_feature_layer`
is -1 (the last layer; LLaVA 1.5 takes -2, which in a 2-layer tower would leave one layer unused).
CLIP's `post_layernorm` only feeds its pooled output, which LLaVA does not use: it gets no gradient.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from openk1.algo.logprobs import token_logprobs
from openk1.errors import OpenK1Error
from openk1.models import prompting
from openk1.models.forward import cached_forward, full_cache, position_ids
from openk1.models.io import RECOMMENDED_KEY, model_dir
from openk1.models.tiny import RECOMMENDED, TinyModelConfig, tiny_llama
from openk1.report.run_dir import atomic_dir

IMAGE_TOKEN = "<image>"


def add_image_token(tokenizer: PreTrainedTokenizerFast) -> int:
    """Add `<image>` to the tokenizer as a special token (in place, once); its id."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    found: Any = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)   # one token -> one id
    return int(found)


def tiny_vision_config(image_size: int, patch: int, hidden: int = 32, layers: int = 2) -> CLIPVisionConfig:
    """A CLIP vision tower of `layers` layers of width `hidden` over image_size^2 px in patch^2 patches."""
    if image_size % patch:
        raise OpenK1Error(f"image_size ({image_size}) must be a multiple of patch ({patch})")
    return CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                            num_attention_heads=2, image_size=image_size, patch_size=patch,
                            projection_dim=hidden)


def tiny_processor(tokenizer: PreTrainedTokenizerFast, image_size: int, patch: int) -> LlavaProcessor:
    """A LlavaProcessor whose `<image>` expands to (image_size / patch)^2 tokens: CLIP's image
    processor (shortest edge resized to image_size, centre crop, CLIP mean/std), CLS counted
    (`num_additional_image_tokens` 1) and dropped (`default`). `<image>` is added to the
    tokenizer if it lacks it."""
    from transformers.models.clip import CLIPImageProcessorPil

    add_image_token(tokenizer)
    images = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size})
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=patch,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          image_token=IMAGE_TOKEN)


def tiny_vlm(size: TinyModelConfig, tokenizer: PreTrainedTokenizerFast, seed: int, image_size: int = 32,
             patch: int = 8) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A freshly initialised tiny LLaVA and its processor (module doc). `tokenizer` (the char
    tokenizer) gets `<image>` added in place; the text model is `tiny_llama(size, ...)`'s config."""
    image_id = add_image_token(tokenizer)
    text = tiny_llama(size, tokenizer, seed).config
    if hasattr(text, RECOMMENDED_KEY):
        delattr(text, RECOMMENDED_KEY)   # kept once, at the top of config.json, where io.py reads it
    config = LlavaConfig(vision_config=tiny_vision_config(image_size, patch), text_config=text,
                         image_token_index=image_id, image_seq_length=(image_size // patch) ** 2,
                         vision_feature_layer=-1, vision_feature_select_strategy="default")
    setattr(config, RECOMMENDED_KEY, RECOMMENDED)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tiny_processor(tokenizer, image_size, patch)


# ---------------------------------------------------------------- load and save


def is_vision(path: str | Path) -> bool:
    """Whether the model folder at `path` (or a run directory's model/) is a vision-language
    model: its config.json has a `vision_config` (LLaVA, Idefics3, Qwen2-VL, ... all do)."""
    try:
        config = json.loads((model_dir(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "vision_config" in config


def load_vision_model(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, processor) through AutoModelForImageTextToText / AutoProcessor, from a local
    `save_pretrained` folder or a run directory's model/; a clear error if it is not one. The
    processor's tokenizer gets a pad token (EOS if it has none) and the model's eos ids as stop
    ids (models/prompting.py)."""
    path = model_dir(path)
    if not is_vision(path):
        raise OpenK1Error(f"{path}: not a vision-language model folder (no config.json with a vision_config); "
                          "make one with `openk1 init-model --set vision=true --out DIR`")
    try:
        processor = AutoProcessor.from_pretrained(str(path))
        model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=dtype)
    except (OSError, ValueError) as exc:
        raise OpenK1Error(f"{path}: cannot load model or processor ({exc})") from None
    tokenizer = processor.tokenizer
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompting.record_eos_ids(tokenizer, model)
    prompting.load_record(tokenizer, path)
    return model, processor


def save_vision_model(model: Any, processor: Any, path: str | Path) -> None:
    """save_pretrained model and processor (its tokenizer and image processor) into a temporary
    folder, then rename it to `path` (as models/io.py save_model)."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
        prompting.save_record(processor.tokenizer, tmp)


# ---------------------------------------------------------------- inputs and image features


def encode(processor: Any, prompt: str, images: list[Image.Image]) -> dict[str, torch.Tensor]:
    """input_ids [1, L] (BOS, each `<image>` expanded to the image's tokens), attention_mask
    [1, L] and, with images, pixel_values [n_images, 3, H, W]. The prompt is used as written (its
    `<image>` markers where the images go, one per image, in order); a chat template is the
    caller's."""
    token = getattr(processor, "image_token", IMAGE_TOKEN)
    if prompt.count(token) != len(images):
        raise OpenK1Error(f"the prompt has {prompt.count(token)} {token} marker(s) for {len(images)} image(s)")
    out = processor(text=prompt, images=images or None, return_tensors="pt")
    keys = ("input_ids", "attention_mask", "pixel_values") if images else ("input_ids", "attention_mask")
    return {k: out[k] for k in keys}


def image_features(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """The projected image features [n_images, tokens, d_text] that replace the `<image>`
    tokens' embeddings: vision tower -> selected layer (CLS dropped) -> projector. Computed once,
    they serve every sample and every segment of a prompt (`embed`); differentiable when grad
    is enabled."""
    tower = next(model.model.vision_tower.parameters())
    out = model.get_image_features(pixel_values=pixel_values.to(tower.device, tower.dtype), return_dict=True)
    features = out.pooler_output if hasattr(out, "pooler_output") else out
    return torch.stack(list(features)) if isinstance(features, (list, tuple)) else features


def embed(model: Any, input_ids: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
    """Input embeddings [B, L, d] with the image tokens' rows replaced, in reading order (row by
    row, left to right), by `features` [n, tokens, d] (n = the images in all rows, in that order)."""
    embeds: torch.Tensor = model.get_input_embeddings()(input_ids)
    slots = input_ids == model.config.image_token_id
    wanted = 0 if features is None else features.shape[0] * features.shape[1]
    if int(slots.sum()) != wanted:
        raise OpenK1Error(f"{int(slots.sum())} image tokens in the batch for {wanted} image feature rows")
    if features is None:
        return embeds
    return embeds.masked_scatter(slots.unsqueeze(-1), features.to(embeds.device, embeds.dtype))


# ---------------------------------------------------------------- forward passes


def vlm_response_logprobs(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                          response_ids: torch.Tensor, action_mask: torch.Tensor,
                          pixel_values: torch.Tensor | None = None, temperature: float = 1.0,
                          features: torch.Tensor | None = None, chunk_size: int | None = None) -> torch.Tensor:
    """log pi_T(response token | prefix, images) [B, T] (0 where masked), as models/forward.py
    `response_logprobs`: prompts left-padded [B, P] with their image tokens expanded, responses
    right-padded [B, T], one forward. Images as `pixel_values` [n, 3, H, W] (encoded here) or as
    precomputed `features` [n, tokens, d] (`image_features`, e.g. shared by the k samples of a
    prompt), n = the images of all rows in row order. Only the prompt's image tokens take image
    features: an `<image>` id a rollout sampled in a response is an ordinary token (its embedding),
    as it was when decoded."""
    if pixel_values is not None and features is not None:
        raise OpenK1Error("give pixel_values or features, not both")
    if pixel_values is not None:
        features = image_features(model, pixel_values)
    embeds = torch.cat([embed(model, prompt_ids, features), model.get_input_embeddings()(response_ids)], dim=1)
    attention_mask = torch.cat([prompt_mask, action_mask], dim=1)       # [B, L]
    T = response_ids.shape[1]
    out = model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                use_cache=False, logits_to_keep=T + 1)
    logits = out.logits[:, :-1]                                         # [B, T, V]
    return token_logprobs(logits, response_ids, chunk_size=chunk_size, temperature=temperature) * action_mask


@dataclass
class VLMGeneration:
    """k samples of one prompt: the prompt [k, P] (identical rows), its pixel_values [n, 3, H, W]
    and features [n, tokens, d] (computed once), the responses [k, T] right-padded, their
    log-probs [k, T] (log softmax(z / temperature), 0 past the end) and mask [k, T]."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    pixel_values: torch.Tensor | None
    features: torch.Tensor | None
    tokens: torch.Tensor
    logprobs: torch.Tensor
    mask: torch.Tensor


def _prefill(model: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Last-position logits [B, V] and the KV cache after the whole prompt (as embeddings)."""
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                position_ids=position_ids(attention_mask), use_cache=True, logits_to_keep=1,
                **{name: full_cache()})
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    return out.logits[:, -1].float(), cache


def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(token [B], its log-prob [B]): greedy at temperature 0 (log-prob under T = 1, as
    rollout/hf.py records), else sampled from softmax(z / temperature)."""
    logp = torch.log_softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)   # [B, V]
    if temperature > 0:
        token = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    else:
        token = logits.argmax(-1)
    return token, logp.gather(-1, token[:, None]).squeeze(-1)


@torch.no_grad()
def vlm_generate(model: Any, processor: Any, prompt: str, images: list[Image.Image], max_new_tokens: int,
                 seed: int, temperature: float = 1.0, samples: int = 1) -> VLMGeneration:
    """`samples` responses to one prompt with images: the image features and the prompt's
    embeddings are computed once and shared by the samples, one prefill, then one cached decode
    step per token (models/forward.py `cached_forward`) until every row has stopped (an id of
    `prompting.stop_ids`, kept as its last token) or `max_new_tokens`."""
    enc = encode(processor, prompt, images)
    device = next(model.parameters()).device
    pixels = enc.get("pixel_values")
    features = image_features(model, pixels.to(device)) if pixels is not None else None
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    embeds = embed(model, ids, features).expand(samples, -1, -1)
    mask = mask.expand(samples, -1)
    logits, cache = _prefill(model, embeds, mask)
    stops = torch.tensor(prompting.stop_ids(processor.tokenizer), device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    pad_id = processor.tokenizer.pad_token_id
    tokens, logps, masks = [], [], []
    alive = torch.ones(samples, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        token, logp = _pick(logits, temperature, generator)
        tokens.append(torch.where(alive, token, pad_id))
        logps.append(logp * alive)
        masks.append(alive)
        alive = alive & ~torch.isin(token, stops)
        if not alive.any():
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits, cache = cached_forward(model, token[:, None], mask, cache)
    return VLMGeneration(ids.expand(samples, -1), enc["attention_mask"].to(device).expand(samples, -1), pixels,
                         features, torch.stack(tokens, 1), torch.stack(logps, 1), torch.stack(masks, 1).long())
