"""The frame every stage's `run()` shares: the run directory, its config, summary and close.

    with StageRun(cfg) as frame:             # the run-directory contract, checked on every rank
        ...load and validate the inputs...    # nothing written yet: a bad input leaves DIR as it was
        frame.begin()                         # DIR/config.yaml: the run starts writing
        ...the stage's work, logging to frame.dir...
        summary["model"] = frame.save_model(model, tokenizer)   # DIR/model (rank 0 writes)
        return frame.finish(summary)          # + wall_seconds; DIR/summary.json; TensorBoard closed

Under torchrun every rank opens the frame (the contract refuses alike on all of them); rank 0
writes, the others hold a run directory that writes nothing (distributed/runtime.py `run_dir`).
A run that raises still closes its TensorBoard writer (what it logged is flushed).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from openk1.distributed import runtime
from openk1.models.io import save_model
from openk1.report.run_dir import RunDir


class StageRun:
    """One stage's run directory from opening to summary (module doc)."""

    def __init__(self, cfg: Any, *, tensorboard: bool = True) -> None:
        self.cfg = cfg
        self.dir: RunDir = runtime.run_dir(cfg, tensorboard=tensorboard)
        self.started = time.perf_counter()
        self.closed = False
        self.forward: dict[str, str] = {}   # which forward pass ran each part, and why

    def note_forward(self, part: str, path: str) -> None:
        """Record (summary.json `forward`) and say (stderr, rank 0) which forward pass runs
        `part` (rollout, update, eval, ...): "lean" or "hf (<why>)" (models/forward.py)."""
        if self.forward.get(part) != path:
            self.forward[part] = path
            if runtime.is_main():
                print(f"openk1: {part} forward: {path}", file=sys.stderr)

    @property
    def path(self) -> Path:
        return self.dir.path

    def begin(self) -> None:
        """The inputs are valid: write DIR/config.yaml (and, with `overwrite`, replace the old run)."""
        self.dir.write_config(self.cfg)

    def save_model(self, model: Any, tokenizer: Any) -> str:
        """Rank 0 saves DIR/model (save_pretrained); every rank gets its path."""
        path = self.path / "model"
        if runtime.is_main():
            save_model(model, tokenizer, path)
        return str(path)

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """`summary` with `wall_seconds` (unless the stage measured its own) to DIR/summary.json;
        the TensorBoard writer closed. Returns the summary."""
        summary.setdefault("wall_seconds", time.perf_counter() - self.started)
        if self.forward:
            summary.setdefault("forward", dict(self.forward))
        self.dir.write_summary(summary)
        self.close()
        return summary

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.dir.close()

    def __enter__(self) -> StageRun:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
