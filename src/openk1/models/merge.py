"""Weight merging (k1.5 report §2.4, long2short): theta = sum_i w_i theta_i over checkpoints of one
architecture and one tokenizer, with sum_i w_i = 1.

Streamed over safetensors shards: the output is written shard by shard in the layout of the
first model, and every tensor is read on its own (`safe_open(...).get_tensor`, memory-mapped),
so memory stays near one output shard whatever the model size. Sums are taken in fp32 and cast
back to the first model's dtype; integer tensors (buffers) must be equal and are copied.
Everything is written to a temporary folder that replaces `out` only when complete.

Vision-language checkpoints (a LLaVA: vision tower, projector and language model in one weight
map) merge tensor by tensor like any other; the first model's processor files are copied with
its config, so the merged folder loads as the same VLM. Their processors (image size,
normalisation, image-token expansion) and the config's image settings must be the same, since
the merged weights are read through one of them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from openk1.errors import OpenK1Error
from openk1.models.io import model_dir
from openk1.report.run_dir import atomic_dir

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def weight_map(model_dir: Path) -> dict[str, str]:
    """Tensor name -> shard file name of a save_pretrained folder (sharded or single file)."""
    if (model_dir / INDEX).is_file():
        return dict(json.loads((model_dir / INDEX).read_text())["weight_map"])
    if (model_dir / SINGLE).is_file():
        with safe_open(str(model_dir / SINGLE), framework="pt") as f:
            return {name: SINGLE for name in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    raise OpenK1Error(f"{model_dir}: no {SINGLE} or {INDEX} (merging needs safetensors weights)")


def normalised_weights(weights: list[float], count: int) -> list[float]:
    """One weight per model, >= 0, scaled to sum to 1; empty = equal weights.

    >>> normalised_weights([3, 1], 2), normalised_weights([], 4)
    ([0.75, 0.25], [0.25, 0.25, 0.25, 0.25])
    """
    if count < 2:
        raise OpenK1Error(f"merge: needs two or more models, got {count}")
    weights = weights or [1.0] * count
    if len(weights) != count:
        raise OpenK1Error(f"merge: {len(weights)} weights for {count} models")
    if min(weights) < 0 or sum(weights) <= 0:
        raise OpenK1Error(f"merge: weights must be >= 0 with a positive sum, got {weights}")
    return [w / sum(weights) for w in weights]


def check_compatible(dirs: list[Path], maps: list[dict[str, str]]) -> None:
    """Same architecture (config.json), same tensor names and same tokenizer as dirs[0]."""
    first = _architecture(dirs[0])
    vocab = _tokenizer_signature(dirs[0])
    for path, names in zip(dirs[1:], maps[1:]):
        if _architecture(path) != first:
            raise OpenK1Error(f"{path / 'config.json'}: architecture {_architecture(path)} "
                              f"differs from {dirs[0]}'s {first}")
        missing = sorted(set(maps[0]) ^ set(names))
        if missing:
            where, other = (path, dirs[0]) if missing[0] not in names else (dirs[0], path)
            raise OpenK1Error(f"{where}: has no tensor {missing[0]!r}, which {other} has "
                              f"({len(missing)} tensor names differ)")
        if _vision_signature(path) != _vision_signature(dirs[0]):
            raise OpenK1Error(f"{path}: image settings (processor files, the config's vision_feature_* and "
                              f"image token) differ from {dirs[0]}'s; merged weights would read other inputs")
        if _tokenizer_signature(path) != vocab:
            raise OpenK1Error(f"{path}: tokenizer differs from {dirs[0]}'s (vocabulary or "
                              "special tokens); merged weights would mean different tokens")


def _architecture(model_dir: Path) -> tuple[str, tuple[str, ...]]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise OpenK1Error(f"{model_dir}: not a model directory (no config.json)")
    config = json.loads(path.read_text())
    return str(config.get("model_type")), tuple(config.get("architectures") or ())


PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
VISION_KEYS = ("vision_feature_layer", "vision_feature_select_strategy", "image_token_id",
               "image_token_index", "image_seq_length")


def _vision_signature(model_dir: Path) -> tuple[Any, ...]:
    """What a VLM's inputs depend on beyond its weights: its processor files and the config's
    image settings (all empty for a text model)."""
    config = json.loads((model_dir / "config.json").read_text())
    files = [json.loads(p.read_text()) if p.is_file() else None for p in map(model_dir.joinpath, PROCESSOR_FILES)]
    return json.dumps(files, sort_keys=True), json.dumps([config.get(k) for k in VISION_KEYS])


def _tokenizer_signature(model_dir: Path) -> tuple[Any, ...]:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise OpenK1Error(f"{model_dir}: cannot load the tokenizer ({exc})") from None
    if tokenizer.pad_token_id is None:   # as models/io.py load_model: a saved lineage member has pad = EOS
        tokenizer.pad_token = tokenizer.eos_token
    specials = sorted(tokenizer.special_tokens_map.items(), key=str)
    return tuple(sorted(tokenizer.get_vocab().items())), tuple(map(str, specials))


def merge_checkpoints(model_dirs: Sequence[str | Path], weights: list[float],
                      out: str | Path, checked: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Write sum_i w_i theta_i to `out` (a save_pretrained folder); returns counts and weights.

    `checked` is called once the models are found compatible, before anything is written."""
    dirs = [model_dir(d) for d in model_dirs]
    w = normalised_weights(weights, len(dirs))
    maps = [weight_map(d) for d in dirs]
    check_compatible(dirs, maps)
    if checked is not None:
        checked()
    shards = sorted(set(maps[0].values()))
    with atomic_dir(out) as tmp:
        _copy_non_weights(dirs[0], tmp)
        for shard in shards:
            names = sorted(n for n, s in maps[0].items() if s == shard)
            _merge_shard(dirs, maps, w, names, tmp / shard, dirs[0] / shard)
    return {"model": str(out), "weights": w, "tensors": len(maps[0]), "shards": len(shards)}


def _copy_non_weights(source: Path, target: Path) -> None:
    """config, generation config, tokenizer files and the shard index of the first model."""
    for path in source.iterdir():
        if path.is_file() and not path.name.endswith((".safetensors", ".bin", ".pt")):
            shutil.copy2(path, target / path.name)


def _merge_shard(dirs: list[Path], maps: list[dict[str, str]], weights: list[float],
                 names: list[str], target: Path, first_file: Path) -> None:
    """Average the tensors `names` (one output shard), reading each input tensor on its own."""
    with ExitStack() as stack:
        handles: dict[Path, Any] = {}

        def tensor(i: int, name: str) -> tuple[torch.Tensor, Path]:
            path = dirs[i] / maps[i][name]
            if path not in handles:
                handles[path] = stack.enter_context(safe_open(str(path), framework="pt"))
            return handles[path].get_tensor(name), path

        merged = {name: _average(name, tensor, weights) for name in names}
        metadata = _metadata(first_file)
    save_file(merged, str(target), metadata=metadata)


def _average(name: str, tensor: Callable[[int, str], tuple[torch.Tensor, Path]],
             weights: list[float]) -> torch.Tensor:
    """sum_i w_i t_i in fp32, cast to the first model's dtype; shapes must match."""
    first, first_path = tensor(0, name)
    floating = first.is_floating_point()
    total = first.float() * weights[0] if floating else first
    for i in range(1, len(weights)):
        other, path = tensor(i, name)
        if other.shape != first.shape:
            raise OpenK1Error(f"{path}: tensor {name!r} has shape {list(other.shape)}, "
                              f"{first_path} has {list(first.shape)}")
        if floating:
            total = total + weights[i] * other.float()
        elif not torch.equal(other, first):
            raise OpenK1Error(f"{path}: integer tensor {name!r} differs from {first_path}'s")
    return total.to(first.dtype).contiguous() if floating else first


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {"format": "pt"})
