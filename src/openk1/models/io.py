"""Load and save any Hugging Face causal LM + tokenizer from a local directory."""

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
    model goes (default: where it loads, the CPU)."""
    path = model_dir(path)
    if not (path / "config.json").is_file():
        raise OpenK1Error(f"{path}: not a model directory (no config.json); "
                          "make one with `openk1 init-model --out DIR`")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except (OSError, ValueError) as exc:
        raise OpenK1Error(f"{path}: cannot load model or tokenizer ({exc})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device is not None:
        model = move(model, device)
    prompting.record_eos_ids(tokenizer, model)
    prompting.load_record(tokenizer, path)
    prompting.configure(tokenizer, getattr(prompts, "prompt_format", "auto"), getattr(prompts, "system_prompt", ""))
    return model, tokenizer


def move(model: Any, device: torch.device | str) -> Any:
    """`model.to(device)` (typed loosely: transformers' `to` is a wrapped overload)."""
    moved: Any = model.to(device)
    return moved


def save_model(model: PreTrainedModel, tokenizer: Any, path: str | Path) -> None:
    """save_pretrained into a temporary folder, then rename it to `path`."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        prompting.save_record(tokenizer, tmp)
