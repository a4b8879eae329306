"""Checkpoints for exact resume: model, optimizer, RNG states and the trainer's own state.

Layout: DIR/checkpoints/step_000012/{model/, optimizer.pt, rng.pt, state.json}; a checkpoint is
written to a temporary folder, its files fsynced, then renamed (and the folder fsynced), so a
crash mid-write never leaves a broken one; the next start removes the temporary folder.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openk1.errors import OpenK1Error
from openk1.report.run_dir import atomic_dir, to_json


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(root: Path, step: int, model: Any, tokenizer: Any,
                    optimizer: dict[str, Any] | None, state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint `step` under root/checkpoints and keep only the newest `keep`;
    `optimizer` is its state dict (under FSDP2 the full one: distributed/fsdp.py)."""
    target = root / "checkpoints" / f"step_{step:06d}"
    with atomic_dir(target) as tmp:
        model.save_pretrained(str(tmp / "model"))
        # a VLM's tokenizer carries its processor (models/io.py): save all of it, or resume cannot load it
        getattr(tokenizer, "openk1_processor", tokenizer).save_pretrained(str(tmp / "model"))
        if optimizer is not None:
            torch.save(optimizer, tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(to_json({"step": step, **state}, indent=2))
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(root: Path) -> list[Path]:
    folder = root / "checkpoints"
    return sorted(folder.glob("step_*")) if folder.is_dir() else []


def latest_checkpoint(root: Path) -> Path:
    found = list_checkpoints(root)
    if not found:
        raise OpenK1Error(f"{root}: --resume given but no checkpoint in {root / 'checkpoints'}")
    return found[-1]


def load_state(path: Path, load_optimizer: Any = None) -> dict[str, Any]:
    """Restore the RNG states, and the optimizer through `load_optimizer(state dict)` when the
    checkpoint has one; return the trainer state (with `step`)."""
    if load_optimizer is not None and (path / "optimizer.pt").exists():
        load_optimizer(torch.load(path / "optimizer.pt", weights_only=False))
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    state: dict[str, Any] = json.loads((path / "state.json").read_text())
    return state


def checkpoint_step(path: Path) -> int:
    return int(json.loads((path / "state.json").read_text())["step"])


def check_resume_step(path: Path, total: int, what: str) -> None:
    """Refuse to resume a run whose length (`total` of `what`) ends before its checkpoint."""
    step = checkpoint_step(path)
    if total < step:
        raise OpenK1Error(f"{path}: --resume with {what}={total}, but this checkpoint is at step "
                          f"{step}; give {what} >= {step}")
