r"""Datasets as people have them: a `DataSource` (path + preset + column mapping) read into
openk1's own rows (docs/stages.md "Dataset rows"; docs/data.md).

A preset is a small function raw row -> openk1 row, one for problems and one for SFT:

    gsm8k      question, answer "... #### 72"     -> prompt, answer "72", solution
    math       problem, solution "... \boxed{x}"  -> prompt, answer "x" (MATH, NuminaMath)
    messages   messages [{role, content}, ...]    -> prompt + boxed answer; SFT keeps messages
    humaneval  prompt, test, entry_point          -> code problem with a program test
    mbpp       text, test_list, code              -> code problem with a program test
    apps       question, input_output, solutions  -> code problem with stdio or call tests

The column keys (`prompt_key`, ...) name the raw column that holds each role, over the
preset's own default column. Nothing is ever downloaded: a missing path that looks like a hub
dataset id is an error giving the command that downloads it beforehand (`missing_message`).

>>> source = DataSource.model_validate("train.jsonl")
>>> source.path, source.preset, source.model_dump()
('train.jsonl', '', 'train.jsonl')
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from openk1.errors import OpenK1Error

# data.io is imported where it is used: config.py may import DataSource, and data.io imports
# config (through report.run_dir)
if TYPE_CHECKING:
    from openk1.data.io import Located

Row = dict[str, Any]
Purpose = Literal["problem", "sft"]
PresetName = Literal["", "gsm8k", "math", "messages", "humaneval", "mbpp", "apps"]
ROLES = ("prompt", "answer", "response", "messages", "id")


class DataSource(BaseModel):
    """A dataset file or folder and how its rows become openk1's rows; a plain string is its path.
    Configured like a config section (config.Section: no unknown keys), which it cannot subclass
    since config.py may use it as a field type."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    path: str = Field("", description="JSONL or Parquet file, or a Hugging Face dataset folder (save_to_disk)")
    preset: PresetName = Field("", description="raw row format: gsm8k, math, messages, humaneval, mbpp, apps "
                                               "('' = openk1's own rows)")
    prompt_key: str = Field("", description="column holding the prompt ('' = the preset's own)")
    answer_key: str = Field("", description="column holding the reference answer ('' = the preset's own)")
    response_key: str = Field("", description="column holding the SFT response / solution ('' = the preset's own)")
    messages_key: str = Field("", description="column holding chat messages ('' = the preset's own)")
    id_key: str = Field("", description="column holding the row id ('' = the preset's own; default: row number)")
    type: Literal["", "math", "code", "freeform"] = Field(
        "", description="problem type forced on every row ('' = the row's own / the preset's)")
    split: str = Field("", description="split of a dataset folder holding several ('' = train, or the only one)")
    limit: int = Field(0, ge=0, description="read only the first N rows (0 = all)")

    @model_validator(mode="before")
    @classmethod
    def _plain_path(cls, values: Any) -> Any:
        """`data: file.jsonl` is `data: {path: file.jsonl}`."""
        return {"path": str(values)} if isinstance(values, (str, Path)) else values

    @field_validator("preset", mode="before")
    @classmethod
    def _known_preset(cls, name: Any) -> Any:
        if isinstance(name, str) and name not in PRESETS and name != "":
            raise ValueError(unknown_preset(name))
        return name

    @model_validator(mode="after")
    def _keys_the_preset_reads(self) -> DataSource:
        columns = PRESETS[self.preset].columns if self.preset else OWN_COLUMNS
        for role in ROLES:
            if getattr(self, f"{role}_key") and role not in columns:
                reads = ", ".join(f"{r}_key ({c})" for r, c in columns.items())
                raise ValueError(f"preset {self.preset} reads no {role} column ({role}_key); it reads {reads}")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> Any:
        """A source that is only a path dumps as that string (config.yaml stays `data: file.jsonl`)."""
        data = handler(self)
        return self.path if self.only_path() else data

    def only_path(self) -> bool:
        """Whether every field but `path` has its default (the rows are read as they are)."""
        fields = type(self).model_fields
        return all(getattr(self, name) == field.default for name, field in fields.items() if name != "path")

    def plain_path(self, command: str) -> str:
        """The path of a stage that reads openk1's own rows only (DPO pairs, RM rows, ...): a
        preset or column mapping there is an error, not silently ignored."""
        if not self.only_path():
            raise OpenK1Error(f"{command}: data: presets and column keys apply to problem and SFT rows; "
                              f"{command} reads its own row format from a plain path (docs/data.md)")
        return self.path

    def __bool__(self) -> bool:
        """A source is given when it has a path (`if cfg.eval_data:` keeps working)."""
        return bool(self.path)


def as_source(value: str | Path | DataSource | dict[str, Any]) -> DataSource:
    """A DataSource from a path, a config mapping or a DataSource; a bad key is an OpenK1Error."""
    from openk1.config import describe

    if isinstance(value, DataSource):
        return value
    try:
        return DataSource.model_validate(value if isinstance(value, dict) else {"path": str(value)})
    except ValidationError as exc:
        raise OpenK1Error(f"data: {describe(exc.errors()[0])}") from None


def unknown_preset(name: str) -> str:
    return f"unknown preset {name!r}; presets: {', '.join(PRESETS)} (or '' for openk1's own rows)"


# -- reading --------------------------------------------------------------------------------------


def iter_source(source: str | Path | DataSource, purpose: Purpose = "problem") -> Iterator[Located]:
    """Stream (where, row) pairs of `source` in openk1's format: problem rows (`to_problem`
    validates them) or SFT rows (`prompt`+`response`, `messages` or `text`)."""
    src = as_source(source)
    if not src.path:
        raise OpenK1Error("data: no path given")
    if not Path(src.path).exists():
        raise OpenK1Error(missing_message(src.path, src.preset))
    from openk1.data.io import iter_located

    convert = converter(src, purpose)
    located = iter_located(src.path, src.split)
    for where, raw in islice(located, src.limit) if src.limit else located:
        row = convert(RawRow(raw, where, src))
        if src.type and purpose == "problem":
            row["type"] = src.type
        yield where, row


def read_source(source: str | Path | DataSource, purpose: Purpose = "problem") -> list[Located]:
    """Every (where, row) pair of `iter_source`; no rows is an error."""
    rows = list(iter_source(source, purpose))
    if not rows:
        raise OpenK1Error(f"{as_source(source).path}: no rows (empty file)")
    return rows


def read_sft_rows(source: str | Path | DataSource) -> list[Row]:
    """SFT rows in openk1's format ({prompt, response}, {messages} or {text}), for `encode_row`."""
    return [row for _, row in read_source(source, "sft")]


def converter(src: DataSource, purpose: Purpose) -> Callable[[RawRow], Row]:
    """The row function of the source's preset for `purpose`."""
    if not src.preset:
        return own_rows
    preset = PRESETS.get(src.preset)
    if preset is None:
        raise OpenK1Error(unknown_preset(src.preset))
    return preset.problem if purpose == "problem" else preset.sft


@dataclass(frozen=True)
class RawRow:
    """One raw row with its location and source: gives fields, or errors naming file, row, field."""

    row: Row
    where: str
    source: DataSource

    def column(self, role: str) -> str:
        """The raw column holding `role`: the source's key, else the preset's default."""
        key: str = getattr(self.source, f"{role}_key")
        return key or (PRESETS[self.source.preset].columns if self.source.preset else OWN_COLUMNS)[role]

    def need(self, name: str, kind: type | tuple[type, ...] = str) -> Any:
        """Raw column `name`, which must be present (not null) and of type `kind`."""
        value = self.row.get(name)
        if value is None:
            preset = f"preset {self.source.preset}" if self.source.preset else "openk1 rows"
            raise self.error(name, f"missing ({preset}; the row has: {', '.join(map(str, self.row)) or 'nothing'})")
        if not isinstance(value, kind):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            raise self.error(name, f"must be {' or '.join(k.__name__ for k in kinds)}, got {type(value).__name__}")
        return value

    def role(self, role: str, required: bool = True, kind: type | tuple[type, ...] = str) -> Any:
        """The value of `role`'s column; None when absent and neither required nor mapped explicitly."""
        name = self.column(role)
        if not required and not getattr(self.source, f"{role}_key") and self.row.get(name) is None:
            return None
        return self.need(name, kind)

    def error(self, name: str, what: str) -> OpenK1Error:
        return OpenK1Error(f"{self.where}: field '{name}' {what}")

    def with_id(self, row: Row) -> Row:
        """`row` with the raw row's id (when its id column is present)."""
        pid = self.role("id", required=False, kind=(str, int))
        return row if pid is None else {**row, "id": str(pid)}


# -- openk1's own rows, renamed -------------------------------------------------------------------

OWN_COLUMNS = {role: role for role in ROLES}


def own_rows(raw: RawRow) -> Row:
    """openk1's own rows, with the mapped columns renamed to openk1's names (a mapped column
    must be present in every row); every other field is kept as it is."""
    row = dict(raw.row)
    for role in ROLES:
        key = getattr(raw.source, f"{role}_key")
        if key and key != role:
            raw.need(key, object)
            row[role] = row.pop(key)
    return row


# -- gsm8k ----------------------------------------------------------------------------------------

CALCULATOR_RE = re.compile(r"<<[^<>]*>>")   # GSM8K's calculator annotations: <<48/2=24>>


def gsm8k_problem(raw: RawRow) -> Row:
    """question -> prompt; answer "steps #### 1,234" -> answer "1234", solution (`_gsm8k_parts`)."""
    answer, solution = _gsm8k_parts(raw)
    return raw.with_id({"prompt": raw.role("prompt"), "answer": answer, "solution": solution})


def gsm8k_sft(raw: RawRow) -> Row:
    _, solution = _gsm8k_parts(raw)
    return {"prompt": raw.role("prompt"), "response": solution}


def _gsm8k_parts(raw: RawRow) -> tuple[str, str]:
    """(final number without commas, worked solution): the steps without calculator annotations,
    then `The answer is $\\boxed{N}$.` so the math verifier reads the answer an SFT model gives."""
    text = raw.role("answer")
    steps, sep, final = text.rpartition("####")
    answer = final.strip().replace(",", "")
    if not sep or not answer:
        raise raw.error(raw.column("answer"), "has no final '#### N' line")
    steps = CALCULATOR_RE.sub("", steps).strip()
    return answer, f"{steps}\nThe answer is $\\boxed{{{answer}}}$."


# -- math (MATH, NuminaMath) ----------------------------------------------------------------------

BOXED_RE = re.compile(r"\\boxed\s*\{")
LEVEL_RE = re.compile(r"^\s*Level\s+(\d+)\s*$")


def last_boxed(text: str) -> str | None:
    r"""The contents of the last `\boxed{...}` (balanced braces; `\{` `\}` are not braces).

    >>> last_boxed(r"so $\boxed{\frac{1}{2}}$, not \boxed{3")
    '\\frac{1}{2}'
    """
    for match in reversed(list(BOXED_RE.finditer(text))):
        depth, i = 1, match.end()
        while i < len(text):
            if text[i] == "\\":
                i += 2
                continue
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[match.end():i].strip()
            i += 1
    return None


def math_problem(raw: RawRow) -> Row:
    """problem -> prompt; answer: the `answer` column when present, else the last \\boxed{} of
    `solution`; MATH's level "Level 3" -> difficulty 3, type/subject -> tags."""
    solution = raw.role("response", required=False)
    answer = raw.role("answer", required=False, kind=(str, int, float))
    if answer is None or answer == "":
        answer = last_boxed(raw.role("response"))
        if answer is None:
            raise raw.error(raw.column("response"), "has no \\boxed{} answer (and the row no answer column)")
    row = {"prompt": raw.role("prompt"), "answer": str(answer)}
    if solution is not None:
        row["solution"] = solution
    return raw.with_id(row | _math_labels(raw.row))


def _math_labels(row: Row) -> Row:
    """difficulty from `level` ("Level 3" or 3), tags from `type` / `subject` (when present)."""
    out: Row = {}
    level = row.get("level")
    match = LEVEL_RE.match(level) if isinstance(level, str) else None
    if isinstance(level, int) or match:
        out["difficulty"] = int(match.group(1)) if match else level
    tags = [row[k] for k in ("type", "subject") if isinstance(row.get(k), str) and row[k]]
    if tags:
        out["tags"] = list(dict.fromkeys(tags))
    return out


def math_sft(raw: RawRow) -> Row:
    return {"prompt": raw.role("prompt"), "response": raw.role("response")}


# -- messages -------------------------------------------------------------------------------------


def messages_problem(raw: RawRow) -> Row:
    """prompt: the last user turn before the final assistant turn (its image parts as `<image>`
    markers, their images in `images`); answer: the answer column when present, else the final
    assistant turn's last \\boxed{}."""
    from openk1.data.images import image_field

    messages, images = _messages(raw)
    final = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    users = [i for i, m in enumerate(messages[:final]) if m["role"] == "user"]
    if not users:
        raise raw.error(raw.column("messages"), "has no user turn before the final assistant turn")
    answer = raw.role("answer", required=False, kind=(str, int, float))
    if answer is None and final < len(messages):
        answer = last_boxed(_turn_text(messages[final]["content"]))
    if answer is None:
        raise raw.error(raw.column("messages"), "has no \\boxed{} answer in the final assistant turn "
                                                "(map an answer column with answer_key)")
    row = {"prompt": _turn_text(messages[users[-1]]["content"]), "answer": str(answer)}
    before = sum(_image_parts(m["content"]) for m in messages[:users[-1]])
    mine = images[before:before + _image_parts(messages[users[-1]]["content"])]
    return raw.with_id(row | image_field(mine))


def messages_sft(raw: RawRow) -> Row:
    """{messages} ({messages, images} with image content parts: the ImageRefs, already read)."""
    messages, images = _messages(raw)
    return {"messages": messages, "images": images} if images else {"messages": messages}


def _messages(raw: RawRow) -> tuple[list[dict[str, Any]], tuple[Any, ...]]:
    """The row's chat turns, each checked to be {role, content} with string content or Hugging
    Face content parts (data/images.py `messages_images`: image parts read and normalised to
    {"type": "image"}), and the images of those parts in order (ImageRefs)."""
    from openk1.data.images import data_dir, messages_images

    messages: list[Any] = raw.role("messages", kind=list)
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), (str, list))):
            raise raw.error(raw.column("messages"), f"[{i}] must be {{role: str, content: str}} "
                                                    "(or a list of content parts)")
    if not messages:
        raise raw.error(raw.column("messages"), "is empty")
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    if all(isinstance(m["content"], str) for m in turns):
        return turns, ()
    return messages_images(turns, data_dir(raw.where), raw.where, raw.column("messages"))


def _turn_text(content: str | list[dict[str, Any]]) -> str:
    """A turn's text: its content, or its (normalised) parts' texts with `<image>` per image part."""
    from openk1.data.images import IMAGE_TOKEN

    if isinstance(content, str):
        return content
    return "".join(part["text"] if part["type"] == "text" else IMAGE_TOKEN for part in content)


def _image_parts(content: str | list[dict[str, Any]]) -> int:
    return 0 if isinstance(content, str) else sum(part["type"] == "image" for part in content)


# -- code: humaneval, mbpp, apps ------------------------------------------------------------------

CODE_NOTE = "Write the complete program in a ```python code block."


def humaneval_problem(raw: RawRow) -> Row:
    """prompt (a signature + docstring) -> an instruction around it; test + entry_point -> one
    program test; prompt + canonical_solution -> solutions."""
    code = raw.role("prompt")
    solution = raw.role("response", required=False)
    test = {"program": raw.need("test"), "entry_point": raw.need("entry_point")}
    prompt = f"Complete this Python function.\n\n```python\n{code.rstrip()}\n```\n\n{CODE_NOTE}"
    return raw.with_id({"prompt": prompt, "answer": "", "type": "code", "tests": [test],
                        "solutions": [] if solution is None else [code + solution]})


def mbpp_problem(raw: RawRow) -> Row:
    """text (or sanitized MBPP's prompt) + the first assert -> prompt (MBPP's own prompt shows
    the tests, so the model knows the function's name; openk1 shows only the first); setup code,
    test imports and every assert -> one program test; code -> solutions."""
    tests: list[Any] = raw.need("test_list", list)
    if not tests or not all(isinstance(t, str) for t in tests):
        raise raw.error("test_list", "must be a non-empty list of assert strings")
    setup = [raw.row.get("test_setup_code") or "", *(raw.row.get("test_imports") or [])]
    program = "\n".join([*(s for s in setup if s), *tests])
    prompt = (f"You are an expert Python programmer, and here is your task: {_mbpp_text(raw)} "
              f"Your code should pass this test:\n\n{tests[0]}\n\n{CODE_NOTE}")
    solution = raw.role("response", required=False)
    return raw.with_id({"prompt": prompt, "answer": "", "type": "code", "tests": [{"program": program}],
                        "solutions": [] if solution is None else [solution]})


def _mbpp_text(raw: RawRow) -> str:
    """The task: `text` (MBPP full), or `prompt` (sanitized MBPP) when `text` is absent."""
    if not raw.source.prompt_key and raw.row.get("text") is None and isinstance(raw.row.get("prompt"), str):
        return str(raw.row["prompt"])
    return str(raw.role("prompt"))


def apps_problem(raw: RawRow) -> Row:
    """question (+ starter code) -> prompt; input_output -> stdio tests, or call tests with
    fn_name; solutions (a JSON list) -> solutions; difficulty kept."""
    spec = _json_field(raw, "input_output", dict)
    fn_name = spec.get("fn_name")
    starter = raw.row.get("starter_code") or ""
    tests = _apps_tests(raw, spec, _call_target(fn_name, starter) if fn_name else "")
    prompt = raw.role("prompt")
    if starter:
        prompt += f"\n\nStart from this code:\n```python\n{starter.rstrip()}\n```"
    if not fn_name:
        prompt += "\n\nRead the input from standard input and print the answer to standard output."
    solutions = _json_field(raw, raw.column("response"), list) if raw.row.get(raw.column("response")) else []
    row = {"prompt": f"{prompt}\n\n{CODE_NOTE}", "answer": "", "type": "code", "tests": tests,
           "solutions": [s for s in solutions if isinstance(s, str)]}
    if raw.row.get("difficulty") is not None:
        row["difficulty"] = raw.row["difficulty"]
    return raw.with_id(row)


def _json_field(raw: RawRow, name: str, kind: type) -> Any:
    """A column holding JSON text (APPS) or the value itself (a converted copy)."""
    value = raw.need(name, (str, kind))
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise raw.error(name, f"is not valid JSON ({exc.msg})") from None
    if not isinstance(value, kind):
        raise raw.error(name, f"must hold a JSON {'object' if kind is dict else 'list'}")
    return value


def _call_target(fn_name: str, starter: str) -> str:
    """What a call test calls: `Solution().f` for LeetCode-style starter code, else `f`."""
    return f"Solution().{fn_name}" if "class Solution" in starter else fn_name


def _apps_tests(raw: RawRow, spec: dict[str, Any], target: str) -> list[dict[str, str]]:
    """APPS inputs/outputs as the code verifier's tests: {"input", "output"} (stdio) or
    {"call", "expected"} (target set). A call's expected output [x] is read as x (APPS wraps
    return values in a one-element list)."""
    inputs, outputs = spec.get("inputs"), spec.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs) or not inputs:
        raise raw.error("input_output", "must hold equally long, non-empty 'inputs' and 'outputs' lists")
    if not target:
        return [{"input": _text(i), "output": _text(o)} for i, o in zip(inputs, outputs)]
    return [{"call": f"{target}({', '.join(map(repr, args if isinstance(args, list) else [args]))})",
             "expected": repr(out[0] if isinstance(out, list) and len(out) == 1 else out)}
            for args, out in zip(inputs, outputs)]


def _text(value: Any) -> str:
    """A stdin/stdout text: APPS stores some as lists of lines."""
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def code_sft(problem: Callable[[RawRow], Row]) -> Callable[[RawRow], Row]:
    """SFT rows of a code preset: its prompt and its first solution in a ```python block."""
    def sft(raw: RawRow) -> Row:
        row = problem(raw)
        if not row["solutions"]:
            raise raw.error(raw.column("response"), "missing: an SFT row needs a solution")
        return {"prompt": row["prompt"], "response": f"```python\n{row['solutions'][0].rstrip()}\n```"}
    return sft


# -- the presets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A raw row format: its default column of each role and its two row functions."""

    columns: dict[str, str]
    problem: Callable[[RawRow], Row]
    sft: Callable[[RawRow], Row]


PRESETS: dict[str, Preset] = {
    "gsm8k": Preset({"prompt": "question", "answer": "answer", "id": "id"}, gsm8k_problem, gsm8k_sft),
    "math": Preset({"prompt": "problem", "answer": "answer", "response": "solution", "id": "unique_id"},
                   math_problem, math_sft),
    "messages": Preset({"messages": "messages", "answer": "answer", "id": "id"}, messages_problem, messages_sft),
    "humaneval": Preset({"prompt": "prompt", "response": "canonical_solution", "id": "task_id"},
                        humaneval_problem, code_sft(humaneval_problem)),
    "mbpp": Preset({"prompt": "text", "response": "code", "id": "task_id"}, mbpp_problem, code_sft(mbpp_problem)),
    "apps": Preset({"prompt": "question", "response": "solutions", "id": "problem_id"},
                   apps_problem, code_sft(apps_problem)),
}


# -- a missing path -------------------------------------------------------------------------------

HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow", ".csv")
# short names people write -> (hub id, config name)
HUB_ALIASES = {"gsm8k": ("openai/gsm8k", "main"), "openai/gsm8k": ("openai/gsm8k", "main"),
               "humaneval": ("openai/openai_humaneval", ""), "openai_humaneval": ("openai/openai_humaneval", ""),
               "mbpp": ("google-research-datasets/mbpp", "full"), "apps": ("codeparrot/apps", "")}


def looks_like_hub_id(path: str) -> bool:
    """`owner/name` or `name`, without a data file suffix (`openai/gsm8k`, `gsm8k`)."""
    return bool(HUB_ID_RE.match(path)) and not path.lower().endswith(DATA_SUFFIXES)


def guess_preset(hub_id: str) -> str:
    """The preset a hub dataset's name suggests ('' when none does)."""
    name = hub_id.lower()
    for preset, word in (("gsm8k", "gsm8k"), ("humaneval", "humaneval"), ("mbpp", "mbpp"), ("math", "math"),
                         ("math", "numina")):
        if word in name:
            return preset
    return "apps" if name.rsplit("/", 1)[-1] == "apps" else ""


def missing_message(path: str | Path, preset: str = "") -> str:
    """Why `path` cannot be read, on one line: not found, and, when it looks like a hub dataset id,
    that openk1 reads no hub at run time, with the commands that download it beforehand."""
    path = str(path)
    if not looks_like_hub_id(path):
        return f"{path}: file not found"
    hub_id, config = HUB_ALIASES.get(path, (path, ""))
    folder = hub_id.rsplit("/", 1)[-1]
    preset = preset or guess_preset(hub_id)
    config_arg = f", '{config}'" if config else ""
    use = f"path: {folder}, preset: {preset}" if preset else f"path: {folder} and the preset matching its columns"
    return (f"{path}: no such file or folder. openk1 reads no dataset hub at run time; if {hub_id!r} is a "
            f"Hugging Face dataset, download it beforehand with `python -c \"import datasets; "
            f"datasets.load_dataset('{hub_id}'{config_arg}).save_to_disk('{folder}')\"` (or `huggingface-cli "
            f"download --repo-type dataset {hub_id} --local-dir {folder}` and point path at one of its .parquet "
            f"files), then use {use} (docs/data.md)")
