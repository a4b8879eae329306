"""docs/config.md, the configuration reference, generated from the config models.

    python -m openk1.config_docs > docs/config.md

One section per command of `openk1` (cli.COMMANDS, in their order): every key with its type,
default, allowed range (the Field's ge/gt/le/lt) and description (the Field's `description`).
A nested section gets its own table under its dotted prefix (`optim.lr`); a list of sections
documents one item (`stages[].lr.lr_max`). A section that is itself a command's config (the
demo's `rl`, long2short's `dpo`) points to that command and lists only the defaults that differ
there. Defaults are those of a config built from nothing, so a validator that fills a section
(long2short's `rl` preset) shows. The output depends on the code alone: tests/test_config_docs.py
fails when the file is stale. Like cli.py, and unlike the layers below, it imports every stage.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from openk1.cli import COMMANDS
from openk1.config import StageConfig

REFRESH = "python -m openk1.config_docs > docs/config.md"
HEADER = f"""# Configuration reference

Generated from the config models by `{REFRESH}`; do not edit by hand.

Every command reads one config: a YAML file (`--config FILE`) and `--set key=value` overrides
(dotted keys reach into sections: `--set optim.lr=3e-4`); an unknown key or a value out of range
is an error that names the key. The flags `--model`, `--data` and `--out` set `model`, `data`
and `out`. The defaults below are the config classes' own; `openk1 demo` starts from its
presets (`src/openk1/presets/demo*.yaml`), and a model made by `openk1 init-model` recommends
settings that a new run takes where the invocation leaves them unset (the run prints them).
Ranges: `[a, b]` includes both ends, `(a, b]` excludes a; "each" applies to every item.
"""


@dataclass(frozen=True)
class Key:
    """One documented key: a setting, or a section (a nested config, `is_section`)."""

    path: str
    type: str
    default: str
    range: str
    description: str
    owner: str                  # module.Class that declares the field
    is_section: bool = False


def command_config(command: str) -> type[StageConfig]:
    """The config class of `openk1 <command>`."""
    spec = COMMANDS[command]
    cls: type[StageConfig] = getattr(importlib.import_module(f"openk1.stages.{spec.module}"), spec.config)
    return cls


def type_name(annotation: Any) -> str:
    """A readable type: `int`, `list[str]`, `"mean" | "log_z"`, `float | None`.

    >>> type_name(Literal["a", "b"]), type_name(list[Annotated[float, "x"]] | None)
    ('"a" | "b"', 'list[float] | None')
    """
    origin = get_origin(annotation)
    if origin is Annotated:
        return type_name(get_args(annotation)[0])
    if origin is Literal:
        return " | ".join(json.dumps(value) for value in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in get_args(annotation))
    if origin in (list, tuple, dict):
        args = ", ".join("..." if arg is Ellipsis else type_name(arg) for arg in get_args(annotation))
        return f"{origin.__name__}[{args}]"
    if annotation is type(None):
        return "None"
    if annotation is Any:
        return "any"
    return str(getattr(annotation, "__name__", annotation))


def bounds(metadata: list[Any]) -> str:
    """A range from ge/gt/le/lt constraints: `> 0`, `>= 1`, `[0, 1]`, `(0, 1]`, or "".

    >>> bounds([annotated_types.Gt(0.0), annotated_types.Le(1.0)]), bounds([annotated_types.Ge(2)])
    ('(0, 1]', '>= 2')
    """
    low = high = ""
    for item in metadata:
        for attr, side in (("ge", "["), ("gt", "("), ("le", "]"), ("lt", ")")):
            value = getattr(item, attr, None) if isinstance(item, annotated_types.BaseMetadata) else None
            if value is None:
                continue
            if side in "[(":
                low = f"{side}{value:g}"
            else:
                high = f"{value:g}{side}"
    if low and high:
        return f"{low}, {high}"
    if low:
        return (">= " if low[0] == "[" else "> ") + low[1:]
    if high:
        return ("<= " if high[-1] == "]" else "< ") + high[:-1]
    return ""


def item_bounds(annotation: Any) -> str:
    """Constraints on the items (dict: values) of a list, tuple or dict field: `each >= 0`.

    >>> item_bounds(list[Annotated[float, annotated_types.Ge(0.0)]])
    'each >= 0'
    """
    if get_origin(annotation) not in (list, tuple, dict):
        return ""
    for arg in get_args(annotation):
        if get_origin(arg) is Annotated:
            extras = get_args(arg)[1:]   # annotated_types constraints, or a Field(...) holding them
            metadata = [m for extra in extras for m in (extra.metadata if isinstance(extra, FieldInfo) else [extra])]
            if inner := bounds(metadata):
                return f"each {inner}"
    return ""


def show(value: Any) -> str:
    """A default as JSON (also YAML flow style); sections in a list show their non-default keys."""
    if isinstance(value, list) and any(isinstance(item, BaseModel) for item in value):
        value = [item.model_dump(mode="json", exclude_defaults=True) if isinstance(item, BaseModel) else item
                 for item in value]
    elif isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value, ensure_ascii=False, default=str)


def section_class(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the config class a field holds, whether as a list of items) or (None, False)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item, True
    return None, False


def owner(cls: type[BaseModel], name: str) -> str:
    """module.Class of the class that declares field `name` (the nearest in the MRO)."""
    for base in cls.__mro__:
        if name in getattr(base, "__annotations__", {}):
            return f"{base.__module__}.{base.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def default_value(field: FieldInfo, values: BaseModel | None, name: str) -> Any:
    """The default of a field: its value in `values`, else the field's own (None if required)."""
    if values is not None:
        return getattr(values, name)
    return None if field.is_required() else field.get_default(call_default_factory=True)


def keys(cls: type[BaseModel], values: BaseModel | None, prefix: str = "") -> list[Key]:
    """The keys of `cls` itself under `prefix`; `values` holds the defaults (None: the fields'
    own, as for the items of a list)."""
    out = []
    for name, field in cls.model_fields.items():
        nested, is_list = section_class(field.annotation)
        value = default_value(field, values, name)
        is_section = nested is not None and not is_list
        default = "required" if values is None and field.is_required() else show(value)
        out.append(Key(prefix + name, nested.__name__ if is_section and nested else type_name(field.annotation),
                       "" if is_section else default, bounds(field.metadata) or item_bounds(field.annotation),
                       field.description or "", owner(cls, name), is_section))
    return out


def all_keys(cls: type[BaseModel], values: BaseModel | None, prefix: str = "") -> list[Key]:
    """Every key of `cls` under `prefix`, each section followed by its own keys (depth first)."""
    out = []
    for key, (name, field) in zip(keys(cls, values, prefix), cls.model_fields.items()):
        out.append(key)
        nested, is_list = section_class(field.annotation)
        if nested is not None:
            value = None if is_list else default_value(field, values, name)
            out += all_keys(nested, value if isinstance(value, BaseModel) else None,
                            key.path + ("[]." if is_list else "."))
    return out


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def prose(text: str) -> str:
    """Plain text in a table cell: `<command>` would read as an HTML tag."""
    return cell(text).replace("<", "&lt;")


def code(text: str) -> str:
    """`text` as a code span in a table cell ("" stays empty)."""
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{cell(text)}{pad}{fence}" if text else ""


def table(rows: list[Key]) -> list[str]:
    lines = ["| Key | Type | Default | Range | Description |", "|---|---|---|---|---|"]
    for key in rows:
        kind = f"section {code(key.type)}" if key.is_section else code(key.type)
        lines.append(f"| {code(key.path)} | {kind} | {code(key.default)} | {prose(key.range)} "
                     f"| {prose(key.description)} |")
    return lines


def command_names() -> dict[type[BaseModel], str]:
    return {command_config(name): name for name in COMMANDS}


def command_section(name: str, cls: type[StageConfig], commands: dict[type[BaseModel], str]) -> list[str]:
    """The Markdown of one command: its top-level keys, then each section under its prefix."""
    spec = COMMANDS[name]
    lines = [f"## openk1 {name}", "", f"{spec.help[0].upper()}{spec.help[1:]}.", "",
             f"Config class `{cls.__name__}` (`src/openk1/stages/{spec.module}.py`); "
             f"e.g. `openk1 {name} --set {spec.example}`."]
    if spec.required:
        lines += ["", "Required: " + ", ".join(f"`{field}`" for field in spec.required) + "."]
    lines += [""]
    lines += blocks(cls, cls(), "", commands, {})
    return lines


def blocks(cls: type[BaseModel], values: BaseModel | None, prefix: str,
           commands: dict[type[BaseModel], str], seen: dict[tuple[Any, ...], str]) -> list[str]:
    """Tables for the keys of `cls` under `prefix`: one for its own keys, then one per section.
    A section with the class and defaults of one already documented (`seen`: its path) points
    to it."""
    lines = table(keys(cls, values, prefix)) + [""]
    for name, field in cls.model_fields.items():
        nested, is_list = section_class(field.annotation)
        if nested is None:
            continue
        path = prefix + name + ("[]" if is_list else "")
        value = None if is_list else default_value(field, values, name)
        section = value if isinstance(value, BaseModel) else None
        lines += [f"### `{path}`: " + (f"each item a {nested.__name__}" if is_list else nested.__name__), ""]
        signature = (nested, *((key.path, key.default) for key in all_keys(nested, section)))
        if nested in commands and not is_list:
            lines += [f"The keys of [`openk1 {commands[nested]}`](#openk1-{commands[nested]}) under "
                      f"`{path}.`" + differing(nested, section, path, commands[nested]), ""]
        elif signature in seen:
            lines += [f"The keys and defaults of `{seen[signature]}`.", ""]
        else:
            seen[signature] = path
            lines += blocks(nested, section, path + ".", commands, seen)
    return lines


def differing(cls: type[BaseModel], values: BaseModel | None, path: str, command: str) -> str:
    """The defaults of section `path` that differ from `openk1 <command>`'s own, as a table."""
    here = {key.path: key.default for key in all_keys(cls, values) if not key.is_section}
    own = {key.path: key.default for key in all_keys(cls, cls()) if not key.is_section}
    changed = [key for key, default in here.items() if default != own[key]]
    if not changed:
        return ", with the same defaults."
    lines = [", with these defaults that differ:", "", f"| Key | Default here | Default of `openk1 {command}` |",
             "|---|---|---|"]
    lines += [f"| {code(path + '.' + key)} | {code(here[key])} | {code(own[key])} |" for key in changed]
    return "\n".join(lines)


def render() -> str:
    """The whole of docs/config.md."""
    commands = command_names()
    lines = [HEADER.rstrip("\n"), "", "Commands: " + ", ".join(
        f"[`{name}`](#openk1-{name})" for name in COMMANDS) + ".", ""]
    for name in COMMANDS:
        lines += command_section(name, command_config(name), commands)
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
