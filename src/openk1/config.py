"""Typed configs: YAML file + `--set a.b=c` overrides -> one validated pydantic model per stage.

Unknown keys and ill-typed values are errors that name the key. The resolved config is what a
stage writes to `DIR/config.yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from openk1.data.sources import DataSource
from openk1.errors import OpenK1Error

C = TypeVar("C", bound="StageConfig")


class Section(BaseModel):
    """Base of every config block: no unknown keys, no silent coercion of bad types."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(),
                              allow_inf_nan=False)   # a NaN or inf setting is a mistake

    @model_validator(mode="before")
    @classmethod
    def _partial_sections(cls, values: Any) -> Any:
        """A section given in part keeps the field's own default for the rest: `optim: {lr: 1e-5}`
        on SFT keeps SFT's lr_min (2e-6), not the bare OptimConfig's (1e-4)."""
        if not isinstance(values, dict):
            return values
        out = dict(values)
        for name, field in cls.model_fields.items():
            given, default = out.get(name), field.default
            if isinstance(given, dict) and isinstance(default, BaseModel):
                out[name] = merge(default.model_dump(), given)
        return out


class StageConfig(Section):
    """Fields every stage shares; the CLI flags --model/--data/--out fill them.

    `resume_may_change` lists the keys (dotted paths; a section name covers its keys) that
    `--resume` may set to another value than the run's own `config.yaml`: what changes neither
    the data order nor an update (logging, checkpoint timing, worker counts). A stage adds its
    own (RL: `iterations`).
    """

    resume_may_change: ClassVar[tuple[str, ...]] = (
        "resume", "overwrite", "log_every", "checkpoint_every", "keep_checkpoints",
        "score_workers", "eval.score_workers", "workers", "device")

    model: str = Field("", description="model: a save_pretrained folder or a run directory with model/ (--model)")
    prompt_format: Literal["auto", "chat", "plain"] = Field(
        "auto", description="how prompts become tokens: chat (the tokenizer's chat template), plain (the text), "
                            "auto (the model's recorded format, else chat when it has a template; "
                            "models/prompting.py)")
    system_prompt: str = Field("", description="system prompt (chat: a system turn; plain: text and a blank line "
                                               "before the prompt); '' = the model's recorded one, or none")
    data: DataSource = Field(DataSource(), description="dataset: JSONL, Parquet or a Hugging Face dataset folder, "
                             "with a preset and column mapping where the stage reads problems (docs/data.md) (--data)")
    out: str = Field("", description="run directory (--out; default: a new runs/<command>-<time>)")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda|cuda:\d+)$",
                        description="auto (this rank's GPU when there is one, else the CPU), cpu, cuda, cuda:N")
    seed: int = Field(0, description="seed of the run's random streams")
    resume: bool = Field(False, description="continue the run in `out` from its newest checkpoint")
    overwrite: bool = Field(False, description="replace the run `out` holds (else an existing run is refused)")

    # a later action of the run `out` holds (`longcot train` after `longcot build`) continues it
    # with its own config.yaml, in which only the keys outside `continuation_keeps` may change
    continuation_keeps: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def continues(cls, saved: dict[str, Any], given: dict[str, Any]) -> bool:
        """Whether the values `given` continue the run whose config.yaml holds `saved`."""
        return False


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


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: what is wrong and where (PyYAML's own message spans several)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + str(getattr(exc, "problem", None) or exc).replace("\n", " ")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise OpenK1Error(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise OpenK1Error(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
    except UnicodeDecodeError as exc:
        raise OpenK1Error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not isinstance(data, dict):
        raise OpenK1Error(f"{path}: top level must be a mapping of config keys")
    return data


def build(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
    """Validate `values` into `cls`, turning pydantic's report into one line naming the key."""
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise OpenK1Error(f"{source}: {describe(exc.errors()[0])}") from None


def describe(error: Any) -> str:
    """One pydantic error as `key.path: message (got value)`. A validator's own message (range,
    cross-field rule) is kept without pydantic's "Value error, " prefix; a rule on a whole
    section (empty key at the top level) or a missing key shows no value."""
    key = ".".join(str(p) for p in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        msg = "unknown key"
    elif kind == "value_error" and "error" in error.get("ctx", {}):
        msg = str(error["ctx"]["error"])
    else:
        msg = error["msg"]
    value = error.get("input")
    whole = kind in ("extra_forbidden", "missing") or isinstance(value, (dict, BaseModel))
    got = "" if whole else f" (got {value!r})"
    text = f"{key}: {msg}{got}" if key else f"{msg}{got}"
    return text.replace("\n", " ")


def load(cls: type[C], path: str | None, overrides: list[str], **flags: str | None) -> C:
    """YAML file, then `--set` overrides, then the CLI's --model/--data/--out flags."""
    values = read_yaml(path) if path else {}
    values = merge(values, parse_overrides(overrides))
    values.update({k: v for k, v in flags.items() if v})
    return build(cls, values, source=path or "config")


def dump(cfg: BaseModel) -> str:
    text: str = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    return text
