"""Dataset I/O and validation: JSONL, Parquet, or a Hugging Face dataset saved on disk.

A bad row is an `OpenK1Error` naming the file, where the row is and the field: `FILE: line N`
in a JSONL file (the physical line, blank lines counted), `FILE: row N` in a Parquet file or a
dataset folder (1-based; `FOLDER[split]: row N` for a split of a DatasetDict folder).
`iter_located` / `read_located` give each row with that location. A DataSource (preset, column
mapping, split, limit: data/sources.py) is read by `load_problems` / `load_sft_rows`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openk1.data.images import ImageRef, data_dir, place_images, resolve_images
from openk1.errors import OpenK1Error
from openk1.report.run_dir import atomic_write_text
from openk1.types import PROBLEM_TYPES, Problem

if TYPE_CHECKING:
    from openk1.data.sources import DataSource

PROBLEM_FIELDS = ("prompt", "answer", "type", "id", "domain", "tags", "difficulty", "tests",
                  "solutions", "images")


Located = tuple[str, dict[str, Any]]   # (where the row is, e.g. "data.jsonl: line 3", the row)


def location(path: str | Path, n: int, unit: str = "row") -> str:
    """How errors name a row: `FILE: line N` (JSONL) or `FILE: row N` (Parquet, dataset folder)."""
    return f"{path}: {unit} {n}"


def iter_located(path: str | Path, split: str = "") -> Iterator[Located]:
    """Stream (where, row) pairs; the format is taken from the path (file suffix or dataset dir).
    `split` picks a split of a dataset folder saved from a DatasetDict (`_hf_split`)."""
    name, path = path, Path(path)
    if split and not path.is_dir():
        raise OpenK1Error(f"{name}: split {split!r} given, but only a dataset folder has splits")
    if path.is_dir():
        rows, chosen = _iter_hf_dataset(path, split)
        name = f"{name}[{chosen}]" if chosen else name
    elif not path.is_file():
        from openk1.data.sources import missing_message

        raise OpenK1Error(missing_message(name))
    elif path.suffix == ".parquet":
        rows = _iter_parquet(path)
    else:
        yield from _iter_jsonl(path, name)
        return
    for n, row in enumerate(rows, start=1):
        yield location(name, n), row


def iter_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """Stream rows as dicts (`iter_located` without the locations)."""
    for _, row in iter_located(path):
        yield row


def _iter_jsonl(path: Path, name: str | Path) -> Iterator[Located]:
    """Rows of a JSONL file, each with its physical line number (blank lines are skipped but
    counted); the file is read as bytes so that a line that is not UTF-8 is named exactly."""
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            where = location(name, n, "line")
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise OpenK1Error(f"{where}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                                  f"byte {exc.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise OpenK1Error(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise OpenK1Error(f"{where}: expected a JSON object")
            yield where, row


def _iter_parquet(path: Path) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise OpenK1Error(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        yield from batch.to_pylist()


def _iter_hf_dataset(path: Path, split: str = "") -> tuple[Iterator[dict[str, Any]], str]:
    """The rows of a `save_to_disk` folder and the split read ("" for a plain Dataset)."""
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:
        raise OpenK1Error(f"{path}: a dataset folder needs `datasets` (pip install datasets)") from None
    if not any((path / name).is_file() for name in ("dataset_dict.json", "state.json")):
        files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.suffix in (".parquet", ".jsonl"))
        hint = f"; point the path at one of its files: {', '.join(files[:5])}" if files else ""
        raise OpenK1Error(f"{path}: not a dataset folder written by save_to_disk{hint}")
    data = load_from_disk(str(path))
    if not isinstance(data, DatasetDict):
        if split:
            raise OpenK1Error(f"{path}: split {split!r} given, but the folder holds one dataset without splits")
        return iter(data), ""
    chosen = _hf_split(path, list(data), split)
    return iter(data[chosen]), chosen


def _hf_split(path: Path, splits: list[str], split: str) -> str:
    """The split to read: `split`, else "train", else the only one; otherwise an error listing them."""
    chosen = split or ("train" if "train" in splits else splits[0] if len(splits) == 1 else "")
    if chosen not in splits:
        what = f"has no split {split!r}" if split else "holds several splits and none is 'train'"
        raise OpenK1Error(f"{path}: {what}; its splits: {', '.join(splits)} (set `split`)")
    return chosen


def read_located(path: str | Path) -> list[Located]:
    """Every (where, row) pair of a dataset; an empty one is an error."""
    rows = list(iter_located(path))
    if not rows:
        raise OpenK1Error(f"{path}: no rows (empty file)")
    return rows


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    return [row for _, row in read_located(path)]


def _field(row: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in row or row[name] is None:
        raise OpenK1Error(f"{where}: missing field '{name}'")
    if not isinstance(row[name], kind):
        raise OpenK1Error(f"{where}: field '{name}' must be {_kind_name(kind)}, "
                          f"got {type(row[name]).__name__}")
    return row[name]


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def to_problem(row: dict[str, Any], where: str, base_dir: str | Path | None = None) -> Problem:
    """Validate one dataset row (docs/stages.md "Dataset rows") into a Problem. A row's `images`
    (docs/data.md "Rows with images") are read from `base_dir`, by default the folder of the
    data file that `where` names, and the prompt gets one `<image>` marker per image."""
    prompt = _field(row, "prompt", str, where)
    kind = row.get("type", "math")
    if kind not in PROBLEM_TYPES:
        raise OpenK1Error(f"{where}: field 'type' must be one of {', '.join(PROBLEM_TYPES)}, "
                          f"got {kind!r}")
    answer = row.get("answer", "") if kind == "code" else _field(row, "answer", (str, int, float), where)
    tests = row.get("tests") or []
    if kind == "code":
        _check_tests(tests, where)
    images = _images(row, where, base_dir)
    if row.get("images") is not None:
        prompt = place_images(prompt, len(images), where)
    return Problem(
        prompt=prompt,
        answer=str(answer),
        type=kind,
        id=str(row.get("id", "")),
        domain=str(row.get("domain") or ""),
        tags=tuple(row.get("tags") or ()),
        difficulty=row.get("difficulty"),
        tests=tuple(tests),
        solutions=tuple(row.get("solutions") or ()),
        extra={k: v for k, v in row.items() if k not in PROBLEM_FIELDS},
        images=images,
    )


def _images(row: dict[str, Any], where: str, base_dir: str | Path | None) -> tuple[ImageRef, ...]:
    """The row's `images`, each read and decoded (none when the field is absent or null)."""
    if row.get("images") is None:
        return ()
    return resolve_images(row["images"], data_dir(where) if base_dir is None else base_dir, where)


def _check_tests(tests: Any, where: str) -> None:
    """A code row's tests: a non-empty list, each test of a form the code verifier runs (its
    own `bad_test_reason`), so a malformed test fails here rather than scoring 0 in training."""
    from openk1.rewards.code import bad_test_reason

    if not tests:
        raise OpenK1Error(f"{where}: missing field 'tests' (needed for type code)")
    if not isinstance(tests, (list, tuple)):
        raise OpenK1Error(f"{where}: field 'tests' must be a list of tests, got {type(tests).__name__}")
    for i, test in enumerate(tests):
        reason = bad_test_reason(test)
        if reason:
            raise OpenK1Error(f"{where}: tests[{i}]: {reason}")


def load_problems(source: str | Path | DataSource) -> list[Problem]:
    """All rows of a problem dataset (a path, or a DataSource with a preset / column mapping:
    data/sources.py), validated; ids default to the row number (1-based)."""
    from openk1.data.sources import read_source

    problems = []
    for n, (where, row) in enumerate(read_source(source), start=1):
        problem = to_problem(row, where)
        problems.append(problem if problem.id else _with_id(problem, str(n)))
    return problems


def _with_id(problem: Problem, pid: str) -> Problem:
    from dataclasses import replace

    return replace(problem, id=pid)


def load_sft_rows(source: str | Path | DataSource) -> list[tuple[str, str]]:
    """(prompt, response) pairs (the gsm8k and math presets give the worked solution as the
    response); `messages` rows are no pairs: `sources.read_sft_rows` gives them as they are."""
    from openk1.data.sources import read_source

    pairs = []
    for where, row in read_source(source, "sft"):
        if "messages" in row and "response" not in row:
            raise OpenK1Error(f"{where}: a `messages` row is no (prompt, response) pair (read it with read_sft_rows)")
        pairs.append((_field(row, "prompt", str, where), _field(row, "response", str, where)))
    return pairs


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
