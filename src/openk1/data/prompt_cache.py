"""Per-prompt result cache (JSONL, appended per batch) so interrupted runs resume."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from openk1.report.run_dir import atomic_write_text


class PromptCache:
    """DIR/cache.jsonl: {"key", "rewards"} per prompt, appended (and fsynced) per batch.

    A line torn by an interrupted write is cut off on open; keys hash the filter, the exact
    model input, the reference, the model and every sampling setting, so a changed setting
    misses the cache instead of reusing stale results.
    """

    def __init__(self, path: Path | None) -> None:
        self.path, self.entries = path, {}
        if path is None or not path.exists():
            return
        text = path.read_text()
        if text and not text.endswith("\n"):
            text = text[:text.rfind("\n") + 1]
            atomic_write_text(path, text)
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                self.entries[entry["key"]] = entry["rewards"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue

    def get(self, key: str) -> list[float] | None:
        return self.entries.get(key)

    def add(self, items: dict[str, list[float]]) -> None:
        self.entries.update(items)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write("".join(json.dumps({"key": k, "rewards": v}) + "\n" for k, v in items.items()))
            f.flush()
            os.fsync(f.fileno())


def model_fingerprint(model_path: str, model: Any) -> str:
    """Names the model in cache keys: its directory and weight files' sizes and mtimes, or
    (in-process, no directory) its config and a checksum of two parameter tensors."""
    path = Path(model_path) if model_path else None
    if path is not None and path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
        stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        return json.dumps([str(path.resolve()), stats])
    if model is None:
        return model_path or "generator"
    params = list(model.parameters())
    checksum = [float(params[i].detach().double().sum()) for i in (0, -1)]
    return json.dumps([model.config.to_json_string(), checksum])
