"""The run directory every stage writes (DESIGN.md "Interfaces users rely on").

    DIR/config.yaml     resolved config          DIR/metrics.jsonl  one JSON object per step
    DIR/summary.json    final figures            DIR/model/         save_pretrained directory
    DIR/checkpoints/    what --resume needs      DIR/tb/            TensorBoard events

Every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from openk1.config import dump


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


class RunDir:
    """Metrics sink for one stage: JSONL + TensorBoard (+ summary/config files)."""

    def __init__(self, out: str | Path, tensorboard: bool = True) -> None:
        self.path = Path(out)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"
        self._tb: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.path / "tb"))

    def write_config(self, cfg: BaseModel) -> None:
        atomic_write_text(self.path / "config.yaml", dump(cfg))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Scalars to metrics.jsonl and TensorBoard; a tensor of several values (e.g. every
        response's length) to TensorBoard only, as a histogram."""
        histograms = {k: v for k, v in metrics.items() if hasattr(v, "numel") and v.numel() > 1}
        row = {"step": step, **{k: _jsonable(v) for k, v in metrics.items() if k not in histograms}}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tb.add_scalar(key, value, step)
            for key, values in histograms.items():
                self._tb.add_histogram(key, values, step)
            self._tb.flush()

    def truncate_metrics(self, last_step: int) -> None:
        """Drop metric rows after `last_step` (a resumed run re-logs them)."""
        if not self.metrics_path.exists():
            return
        rows = [ln for ln in self.metrics_path.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in rows if json.loads(ln).get("step", 0) <= last_step]
        atomic_write_text(self.metrics_path, "".join(ln + "\n" for ln in kept))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    lines = Path(path).read_text().splitlines()
    return [json.loads(ln) for ln in lines if ln.strip()]
