"""Images in rollouts and in the RL update, for a LLaVA-layout vision-language model
(models/vision.py; docs/vision.md "Rollouts, RL and eval with images").

A prompt with images is tokenized as a text prompt (models/prompting.py), then each `<image>` id
is expanded to the image's token count, as the model's processor would (`prompt_tokens`). The
processor travels on the tokenizer (`openk1_processor`, attached by models/io.py `load_model`).

Image features (vision tower -> projector) are computed once per distinct image (its sha256,
`ImageRef.digest`) of a batch, in one vision-tower call, and shared by every row showing it: the
k samples of a prompt, the continued segments of a partial rollout (`FeatureCache`, the engine's;
`row_features`, the trainer's, with gradients).

Which `<image>` ids take features: in each row, the first n ids, n = the token count of the row's
own images (`scatter`). A prompt's image tokens come before anything the model wrote, so an
`<image>` id sampled in a response (a random model samples it) stays an ordinary token, also when
a partial rollout's earlier segments are moved to the prompt side (rollout/partial.py loss_view).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from openk1.data.images import IMAGE_TOKEN, ImageRef, image_token_id, image_tokens, pixel_values
from openk1.errors import OpenK1Error
from openk1.models.io import PROCESSOR, processor_of
from openk1.models.prompting import prompt_ids

Images = tuple[ImageRef, ...]     # one row's images, in the order of its prompt's markers


def require_processor(tokenizer: Any) -> Any:
    """The attached processor, or an error saying that prompts with images need a VLM."""
    processor = processor_of(tokenizer)
    if processor is None:
        raise OpenK1Error("a prompt with images needs a vision-language model (its processor on the tokenizer, "
                          f"`{PROCESSOR}`); this model is text only: make one with "
                          "`openk1 init-model --set vision=true`")
    return processor


# ---------------------------------------------------------------- prompts


def token_counts(processor: Any, images: Images) -> list[int]:
    """How many `<image>` tokens each image becomes: what the processor writes for one marker
    (LLaVA at 32 px / patch 8: 16; data/images.py `image_tokens`, cached per image)."""
    image_id = image_token_id(processor)
    return [sum(t == image_id for t in image_tokens(processor, ref)) for ref in images]


def expand(ids: Sequence[int], image_id: int, counts: list[int]) -> list[int]:
    """`ids` with the i-th `image_id` repeated counts[i] times; the markers must match the images.

    >>> expand([1, 9, 2, 9], 9, [2, 3])
    [1, 9, 9, 2, 9, 9, 9]
    """
    found = sum(1 for i in ids if i == image_id)
    if found != len(counts):
        raise OpenK1Error(f"the prompt has {found} {IMAGE_TOKEN} marker(s) for {len(counts)} image(s)")
    out: list[int] = []
    remaining = iter(counts)
    for i in ids:
        out += [i] * next(remaining) if i == image_id else [i]
    return out


def prompt_tokens(tokenizer: Any, prompt: str, images: Images = ()) -> list[int]:
    """The prompt's ids in the tokenizer's prompt format, each `<image>` expanded for its image;
    a text prompt's ids as they are."""
    ids = prompt_ids(tokenizer, prompt)
    if not images:
        return ids
    processor = require_processor(tokenizer)
    return expand(ids, image_token_id(processor), token_counts(processor, images))


# ---------------------------------------------------------------- image features


def encode_images(model: Any, processor: Any, images: Sequence[ImageRef]) -> dict[str, torch.Tensor]:
    """Features [tokens, d] of each distinct image of `images`, by digest: ONE vision-tower call
    (differentiable when grad is enabled)."""
    from openk1.models.vision import image_features

    distinct = list({ref.digest: ref for ref in images}.values())
    if not distinct:
        return {}
    features = image_features(model, pixel_values(processor, distinct))   # [n, tokens, d]
    return {ref.digest: f for ref, f in zip(distinct, features)}


def stack(rows: Sequence[Images], by_digest: dict[str, torch.Tensor]) -> list[torch.Tensor | None]:
    """Each row's features [n_images, tokens, d] (None without images)."""
    return [torch.stack([by_digest[ref.digest] for ref in row]) if row else None for row in rows]


def row_features(model: Any, processor: Any, rows: Sequence[Images]) -> list[torch.Tensor | None]:
    """Each row's features, computed once per distinct image of `rows` (the trainer's: with
    gradients through the tower and projector when grad is enabled)."""
    return stack(rows, encode_images(model, processor, [ref for row in rows for ref in row]))


def scatter(model: Any, ids: torch.Tensor, rows: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Input embeddings [B, L, d] of ids [B, L], the first n `<image>` ids of row b replaced, in
    order, by rows[b]'s n = images x tokens feature rows (module doc: later `<image>` ids are
    ordinary tokens)."""
    embeds: torch.Tensor = model.get_input_embeddings()(ids)
    present = [f.reshape(-1, f.shape[-1]) for f in rows if f is not None]
    if not present:
        return embeds
    wanted = torch.tensor([0 if f is None else f.shape[0] * f.shape[1] for f in rows], device=ids.device)
    is_image = ids == model.config.image_token_id
    slots = is_image & (is_image.long().cumsum(-1) <= wanted[:, None])            # [B, L]
    found = slots.sum(-1)
    if not torch.equal(found, wanted):
        bad = int((found != wanted).nonzero()[0])
        raise OpenK1Error(f"row {bad}: {int(found[bad])} image tokens for {int(wanted[bad])} image feature rows")
    source = torch.cat(present).to(embeds.device, embeds.dtype)
    return embeds.masked_scatter(slots.unsqueeze(-1), source)


def vision_parameters(model: Any) -> list[torch.nn.Parameter]:
    """The parameters the image features depend on: LLaVA's vision tower and projector (every
    child of the base model but the language model); all of them for another layout."""
    base = getattr(model, "model", None)
    children = dict(base.named_children()) if base is not None else {}
    if "language_model" not in children:
        return list(model.parameters())
    return [p for name, child in children.items() if name != "language_model" for p in child.parameters()]


def fingerprint(model: Any) -> tuple[tuple[int, int], ...]:
    """Where the vision parameters live and how often they were written in place ((data_ptr,
    version counter) each): an optimizer step, `load_state_dict` or a weight sync changes it."""
    return tuple((p.data_ptr(), p._version) for p in vision_parameters(model))


def freeze_vision_tower(model: Any) -> int:
    """Stop gradients into the vision tower (`requires_grad` False; the projector still trains);
    the number of parameters frozen (0 for a text model)."""
    tower = getattr(getattr(model, "model", None), "vision_tower", None)
    if tower is None:
        return 0
    params = list(tower.parameters())
    for p in params:
        p.requires_grad_(False)
    return sum(p.numel() for p in params)


class FeatureCache:
    """The rollout engine's image features by digest (no gradients). Valid while the vision
    parameters are unchanged (`fingerprint`): across `sample` calls too, e.g. eval, a frozen
    tower and projector, or the next segment of a partial rollout when no update touched them;
    recomputed after any update or `load_weights`. Only the last call's images are kept."""

    def __init__(self) -> None:
        self.entries: dict[str, torch.Tensor] = {}
        self.version: tuple[tuple[int, int], ...] = ()
        self.used: set[str] = set()
        self.encoded = 0          # images encoded (vision-tower rows), over the engine's life
        self.calls = 0            # vision-tower calls, over the engine's life

    def begin(self, model: Any) -> None:
        """Start a `sample` call: drop everything if the weights changed since the last one."""
        version = fingerprint(model)
        if version != self.version:
            self.entries.clear()
            self.version = version
        self.used = set()

    def rows(self, model: Any, processor: Any, rows: Sequence[Images]) -> list[torch.Tensor | None]:
        """Each row's features, encoding (in one vision-tower call) only the images not cached."""
        refs = [ref for row in rows for ref in row]
        missing = [ref for ref in refs if ref.digest not in self.entries]
        if missing:
            new = encode_images(model, processor, missing)
            self.entries.update(new)
            self.encoded += len(new)
            self.calls += 1
        self.used |= {ref.digest for ref in refs}
        return stack(rows, self.entries)

    def end(self) -> None:
        """End a `sample` call: keep only its images (the next segments of its prompts)."""
        self.entries = {d: f for d, f in self.entries.items() if d in self.used}

    def clear(self) -> None:
        self.entries.clear()
        self.version = ()
