"""Typed configs: YAML file + `--set a.b=c` overrides -> one validated pydantic model per stage.

Unknown keys and ill-typed values are errors that name the key. The resolved config is what a
stage writes to `DIR/config.yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from openk1.errors import OpenK1Error

C = TypeVar("C", bound="StageConfig")


class Section(BaseModel):
    """Base of every config block: no unknown keys, no silent coercion of bad types."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class StageConfig(Section):
    """Fields every stage shares; the CLI flags --model/--data/--out fill them."""

    model: str = ""
    data: str = ""
    out: str = ""
    seed: int = 0


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["rl.tau=0.1", "hidden=128"]` -> nested dict; values are parsed as YAML scalars.

    >>> parse_overrides(["rl.tau=0.1", "name=x"])
    {'rl': {'tau': 0.1}, 'name': 'x'}
    """
    tree: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise OpenK1Error(f"--set {pair!r}: expected key=value")
        node = tree
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise OpenK1Error(f"--set {pair!r}: {part} is not a section")
        node[leaf] = yaml.safe_load(raw) if raw.strip() else ""
    return tree


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `update` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise OpenK1Error(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise OpenK1Error(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise OpenK1Error(f"{path}: top level must be a mapping of config keys")
    return data


def build(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
    """Validate `values` into `cls`, turning pydantic's report into one line naming the key."""
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        got = "" if first["type"] == "extra_forbidden" else f" (got {first.get('input')!r})"
        raise OpenK1Error(f"{source}: {key}: {msg}{got}") from None


def load(cls: type[C], path: str | None, overrides: list[str], **flags: str | None) -> C:
    """YAML file, then `--set` overrides, then the CLI's --model/--data/--out flags."""
    values = read_yaml(path) if path else {}
    values = merge(values, parse_overrides(overrides))
    values.update({k: v for k, v in flags.items() if v})
    return build(cls, values, source=path or "config")


def dump(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
