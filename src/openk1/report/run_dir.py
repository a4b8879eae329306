"""The run directory every stage writes, and the contract that keeps it a faithful record.

    DIR/config.yaml     resolved config          DIR/metrics.jsonl  one JSON object per step
    DIR/summary.json    final figures            DIR/model/         save_pretrained directory
    DIR/checkpoints/    what --resume needs      DIR/tb/            TensorBoard events

The contract (`open_run`):
  - a new run needs an absent or empty DIR; a DIR that holds a run is refused unless `resume`
    (continue it) or `overwrite` (replace it) is set, and a non-empty DIR that holds no run is
    never written into;
  - `resume` continues with the run's own config: a key may differ from `DIR/config.yaml` only
    if the config class lists it in `resume_may_change`;
  - nothing is written before the stage calls `write_config` (after its inputs validated): a
    refused or failed start leaves DIR as it was; `overwrite` deletes the old run only then;
  - on resume, temporary files and folders a kill left behind are removed, and TensorBoard
    drops the events after the checkpoint's step (`purge_step`);
  - every file is written under a temporary name, fsynced, renamed, and its folder fsynced;
    files and folders get the permissions of the user's umask; JSON is strict (NaN -> null).
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

import yaml
from pydantic import BaseModel

from openk1.config import dump, yaml_problem
from openk1.errors import OpenK1Error

TMP_MARK = ".openk1-tmp"        # in every temporary name: what a kill leaves is found by it
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints", "model", "tb")
PATH_KEYS = ("out", "model", "data", "eval_data", "dataset")   # compared as real paths


# ---------------------------------------------------------------- atomic, durable writes


def umask() -> int:
    """The process's umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def settle_tree(root: Path) -> None:
    """Give every file under `root` the umask's permissions (libraries such as safetensors
    write 0600) and fsync it, then every folder, deepest first, `root` last."""
    mask = umask()
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            os.chmod(Path(folder) / name, 0o666 & ~mask)
            _fsync_path(Path(folder) / name)
        os.chmod(folder, 0o777 & ~mask)
        _fsync_path(Path(folder))


def _replace(tmp: Path, path: Path) -> None:
    """Rename `tmp` over `path` and make the rename itself durable (fsync of the folder)."""
    os.replace(tmp, path)
    _fsync_path(path.parent)


def _temp_file(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_MARK + suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~umask())   # mkstemp makes 0600: follow the umask like open() does
    return Path(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, fsync it, rename it to `path`."""
    path = Path(path)
    tmp = _temp_file(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); on success it is fsynced and renamed."""
    path = Path(path)
    tmp = _temp_file(path, path.suffix)
    try:
        yield tmp
        _fsync_path(tmp)
        _replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success its files get the umask's permissions and
    are fsynced, and it replaces `path`; on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_MARK, dir=path.parent))
    try:
        yield tmp
        settle_tree(tmp)   # mkdtemp made it 0700
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    _replace(tmp, path)


def remove_temporaries(root: Path) -> list[Path]:
    """Delete the temporary files and folders an interrupted write left under `root`."""
    found = sorted((p for p in root.rglob(f"*{TMP_MARK}*")), key=lambda p: len(p.parts))
    removed: list[Path] = []
    for p in found:
        if any(p.is_relative_to(r) for r in removed):
            continue
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        removed.append(p)
    return removed


# ---------------------------------------------------------------- strict JSON


def strict(value: Any) -> Any:
    """`value` with tensors and numpy scalars as Python numbers and non-finite floats as None,
    so that the JSON written is strict (RFC 8259 has no NaN or Infinity)."""
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(value: Any, **kwargs: Any) -> str:
    """json.dumps that never writes NaN/Infinity (they become null); other objects via str."""
    return json.dumps(strict(value), allow_nan=False, default=str, **kwargs)


# ---------------------------------------------------------------- the contract


def holds_run(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


def check_out(cfg: Any, stage: str = "") -> Path:
    """Refuse what would mix or lose a run (module doc); returns the run directory.

    `cfg` is a StageConfig (out, resume, overwrite). Nothing is written or deleted here.
    """
    if not cfg.out:
        raise OpenK1Error(f"{stage or 'this stage'}: needs --out DIR (the run directory)")
    path = Path(cfg.out)
    if path.exists() and not path.is_dir():
        raise OpenK1Error(f"{path}: --out must be a directory; this is a file")
    if cfg.resume:
        if not (path / "config.yaml").is_file():
            raise OpenK1Error(f"{path}: --resume given but this folder holds no run (no config.yaml)")
        check_resume_config(cfg, path)
    elif holds_run(path):
        if cfg.overwrite:
            check_inputs_outside(path, [(k, getattr(cfg, k, "")) for k in PATH_KEYS[1:]])   # not `out`
        elif (path / "config.yaml").is_file() and cfg.continues(saved_values(path), cfg.model_dump()):
            check_resume_config(cfg, path, continuation=True)
        else:
            raise OpenK1Error(f"{path}: already holds a run; continue it with --resume, replace it "
                              "with --overwrite, or choose another --out")
    elif path.is_dir() and any(path.iterdir()):
        raise OpenK1Error(f"{path}: not empty and not an openk1 run; choose an empty or new --out")
    return path


def check_inputs_outside(path: Path, inputs: list[tuple[str, Any]]) -> None:
    """--overwrite deletes DIR: an input (name, path) inside it would be deleted under the
    run's feet."""
    root = path.resolve()
    for key, value in inputs:
        value = getattr(value, "path", value)   # a data source (data/sources.py): its file
        if isinstance(value, str) and value and Path(value).resolve().is_relative_to(root):
            raise OpenK1Error(f"{path}: --overwrite would delete {key} {value}, which lies inside "
                              "it; copy it elsewhere or choose another --out")


def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat(value, name + "."))
        else:
            out[name] = value
    return out


def _same(key: str, a: Any, b: Any) -> bool:
    if key.removesuffix(".path") in PATH_KEYS and isinstance(a, str) and isinstance(b, str) and a and b:
        return os.path.realpath(a) == os.path.realpath(b)
    return bool(a == b)


def saved_values(path: Path) -> dict[str, Any]:
    """The config values of the run in `path` (its config.yaml)."""
    try:
        values = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except yaml.YAMLError as exc:
        raise OpenK1Error(f"{path / 'config.yaml'}: not valid YAML ({yaml_problem(exc)})") from None
    if not isinstance(values, dict):
        raise OpenK1Error(f"{path / 'config.yaml'}: not a mapping of config keys")
    return values


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def check_resume_config(cfg: Any, path: Path, continuation: bool = False) -> None:
    """Refuse a resumed config that differs from the run's own in a key that is not in
    `type(cfg).resume_may_change`; a continuation (`continues`) may change every key but
    those in `type(cfg).continuation_keeps`."""
    given = flat(cfg.model_dump(mode="json"))
    saved = flat(saved_values(path))
    kind = type(cfg)

    def frozen(key: str) -> bool:
        if continuation:
            return _under(key, kind.continuation_keeps)
        return not _under(key, kind.resume_may_change)

    changed = [k for k in sorted(set(given) | set(saved))
               if frozen(k) and not _same(k, given.get(k), saved.get(k))]
    if changed:
        detail = "; ".join(f"{k}: {saved.get(k)!r} -> {given.get(k)!r}" for k in changed[:5])
        what = "continuing this run" if continuation else "--resume"
        raise OpenK1Error(f"{path}: {what} cannot change {', '.join(changed)} ({detail}); the run "
                          f"continues with its own config.yaml. Start a new run (another --out, or "
                          f"--overwrite) to change them")


# ---------------------------------------------------------------- the writer


def _after_existing_events(folder: Path) -> None:
    """Wait (at most a second) until a new TensorBoard event file sorts after the folder's.

    Event files are named `events.out.tfevents.<second>.<host>.<pid>.<counter>` and read in
    name order; a resumed run's file whose second equals the old file's could sort before it
    (counter 10 < 9 as text), and its purge of the steps after the checkpoint would then come
    first and drop nothing."""
    import time

    seconds = [int(p.name.split(".")[3]) for p in folder.glob("events.out.tfevents.*")
               if p.name.split(".")[3].isdigit()] if folder.is_dir() else []
    while seconds and int(time.time()) <= max(seconds):
        time.sleep(0.05)


class RunDir:
    """Metrics sink for one stage: JSONL + TensorBoard (+ summary/config files).

    Nothing touches the disk before the first write (`write_config`, `log`, `write_summary`,
    or `begin`); `overwrite=True` clears the old run at that moment.
    """

    def __init__(self, out: str | Path, tensorboard: bool = True, overwrite: bool = False) -> None:
        self.path = Path(out)
        self.metrics_path = self.path / "metrics.jsonl"
        self.tensorboard = tensorboard
        self._overwrite = overwrite
        self._purge_step: int | None = None
        self._begun = False
        self._tb: Any = None

    def begin(self) -> Path:
        """Create DIR (clearing an old run first when overwriting); idempotent."""
        if not self._begun:
            if self._overwrite and holds_run(self.path):
                for entry in self.path.iterdir():
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            self.path.mkdir(parents=True, exist_ok=True)
            self._begun = True
        return self.path

    def _writer(self) -> Any:
        if self._tb is None and self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            tb = self.begin() / "tb"
            if self._purge_step is not None:
                _after_existing_events(tb)
            self._tb = SummaryWriter(str(tb), purge_step=self._purge_step)
        return self._tb

    def write_config(self, cfg: BaseModel) -> None:
        atomic_write_text(self.begin() / "config.yaml", dump(cfg))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Scalars to metrics.jsonl and TensorBoard; a tensor of several values (e.g. every
        response's length) to TensorBoard only, as a histogram."""
        histograms = {k: v for k, v in metrics.items() if hasattr(v, "numel") and v.numel() > 1}
        row = {"step": step, **strict({k: v for k, v in metrics.items() if k not in histograms})}
        with (self.begin() / "metrics.jsonl").open("a") as f:
            f.write(to_json(row) + "\n")
        tb = self._writer()
        if tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "step":
                    tb.add_scalar(key, value, step)
            for key, values in histograms.items():
                tb.add_histogram(key, values, step)
            tb.flush()

    def truncate_metrics(self, last_step: int) -> None:
        """Resume from `last_step`: drop the metric rows and TensorBoard events after it (the
        resumed run logs them again)."""
        self._purge_step = last_step + 1
        if not self.metrics_path.exists():
            return
        rows = [ln for ln in self.metrics_path.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in rows if json.loads(ln).get("step", 0) <= last_step]
        atomic_write_text(self.metrics_path, "".join(ln + "\n" for ln in kept))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.begin() / "summary.json", to_json(summary, indent=2) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def open_run(cfg: Any, tensorboard: bool = True, writes: bool = True) -> RunDir:
    """The run directory of a stage config after `check_out`; on resume, the temporaries a
    kill left are removed. `writes=False` (torchrun ranks > 0) returns a RunDir that writes
    nothing."""
    path = check_out(cfg)
    if not writes:
        return QuietRunDir(path)
    if cfg.resume:
        remove_temporaries(path)
    return RunDir(path, tensorboard=tensorboard, overwrite=bool(cfg.overwrite) and not cfg.resume)


def _quiet(*_: Any, **__: Any) -> None:
    return None


class QuietRunDir(RunDir):
    """Ranks > 0 under torchrun: metrics, config and summary are rank 0's to write."""

    def __init__(self, out: str | Path) -> None:
        super().__init__(out, tensorboard=False)

    write_config = log = write_summary = close = staticmethod(_quiet)

    def truncate_metrics(self, last_step: int) -> None:
        return None

    def begin(self) -> Path:
        return self.path


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    lines = Path(path).read_text().splitlines()
    return [json.loads(ln) for ln in lines if ln.strip()]
