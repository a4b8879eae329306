"""Load and save any Hugging Face causal LM + tokenizer (or vision-language model + processor) from a local
directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from openk1.errors import OpenK1Error
from openk1.models import prompting
from openk1.report.run_dir import atomic_dir


def model_dir(path: str | Path) -> Path:
    """The `save_pretrained` folder `path` names: itself, or a run directory's `model/`
    (so `--model runs/sft` means `runs/sft/model`)."""
    path = Path(path)
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        return path / "model"
    return path


RECOMMENDED_KEY = "openk1_recommended"


def recommended_settings(path: str | Path, command: str) -> dict[str, Any]:
    """The settings the model at `path` recommends for `command` (config.json's
    `openk1_recommended`, written by `openk1 init-model`); {} when it has none or `path` is not
    a readable model directory (the stage reports that itself)."""
    try:
        config = json.loads((model_dir(path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    section = config.get(RECOMMENDED_KEY, {}) if isinstance(config, dict) else {}
    found = section.get(command, {}) if isinstance(section, dict) else {}
    return found if isinstance(found, dict) else {}


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, prompts: Any = None,
               device: torch.device | str | None = None) -> tuple[PreTrainedModel, Any]:
    """(model, tokenizer) from a `save_pretrained` directory (or a run directory holding one in
    `model/`); a clear error if it is neither. The tokenizer gets the prompt format
    (models/prompting.py): `prompts.prompt_format` / `prompts.system_prompt` (a stage config),
    default `auto`, and the model's generation_config eos ids as stop ids. `device`: where the
    model goes (default: where it loads, the CPU).

    A vision-language folder (`vision.is_vision`: a `vision_config` in config.json) loads as
    its VLM (AutoModelForImageTextToText) with the processor's tokenizer, the processor attached
    to it (`processor_of(tokenizer)`), so every stage that loads a model takes a VLM as it is."""
    path = model_dir(path)
    if not (path / "config.json").is_file():
        raise OpenK1Error(f"{path}: not a model directory (no config.json); "
                          "make one with `openk1 init-model --out DIR`")
    model, tokenizer = _load_vision(path, dtype) if _vision_folder(path) else _load_text(path, dtype)
    if device is not None:
        model = move(model, device)
    prompting.record_eos_ids(tokenizer, model)
    prompting.load_record(tokenizer, path)
    prompting.configure(tokenizer, getattr(prompts, "prompt_format", "auto"), getattr(prompts, "system_prompt", ""))
    return model, tokenizer


def _load_text(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, Any]:
    """A causal LM and its tokenizer (a pad token: EOS when it has none)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except (OSError, ValueError) as exc:
        raise OpenK1Error(f"{path}: cannot load model or tokenizer ({exc})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


PROCESSOR = "openk1_processor"   # on a VLM's tokenizer: its processor (images -> pixels, <image> expansion)


def processor_of(tokenizer: Any) -> Any:
    """The processor attached to a VLM's tokenizer by `load_model`; None for a text model."""
    return getattr(tokenizer, PROCESSOR, None)


def _vision_folder(path: Path) -> bool:
    from openk1.models.vision import is_vision  # vision.py imports this module

    return is_vision(path)


def _load_vision(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, Any]:
    """A VLM and its processor's tokenizer, the processor attached (`processor_of`)."""
    from openk1.models.vision import load_vision_model

    model, processor = load_vision_model(path, dtype)
    tokenizer = processor.tokenizer
    setattr(tokenizer, PROCESSOR, processor)
    return model, tokenizer


def move(model: Any, device: torch.device | str) -> Any:
    """`model.to(device)` (typed loosely: transformers' `to` is a wrapped overload)."""
    moved: Any = model.to(device)
    return moved


def save_model(model: PreTrainedModel, tokenizer: Any, path: str | Path) -> None:
    """save_pretrained into a temporary folder, then rename it to `path`; a VLM's tokenizer
    (one with a processor attached) saves its whole processor (`vision.save_vision_model`)."""
    processor = processor_of(tokenizer)
    if processor is not None:
        from openk1.models.vision import save_vision_model

        save_vision_model(model, processor, path)
        return
    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        prompting.save_record(tokenizer, tmp)
