"""Dataset I/O and validation: JSONL, Parquet, or a Hugging Face dataset saved on disk.

A bad row is an `OpenK1Error` naming the file, the row (1-based) and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from openk1.errors import OpenK1Error
from openk1.report.run_dir import atomic_write_text
from openk1.types import PROBLEM_TYPES, Problem

PROBLEM_FIELDS = ("prompt", "answer", "type", "id", "domain", "tags", "difficulty", "tests",
                  "solutions")


def iter_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """Stream rows as dicts; the format is taken from the path (file suffix or dataset dir)."""
    path = Path(path)
    if path.is_dir():
        yield from _iter_hf_dataset(path)
    elif not path.is_file():
        raise OpenK1Error(f"{path}: file not found")
    elif path.suffix == ".parquet":
        yield from _iter_parquet(path)
    else:
        yield from _iter_jsonl(path)


def _iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open() as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise OpenK1Error(f"{path}: row {n}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise OpenK1Error(f"{path}: row {n}: expected a JSON object")
            yield row


def _iter_parquet(path: Path) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise OpenK1Error(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        yield from batch.to_pylist()


def _iter_hf_dataset(path: Path) -> Iterator[dict[str, Any]]:
    try:
        from datasets import load_from_disk
    except ImportError:
        raise OpenK1Error(f"{path}: a dataset folder needs `datasets` (pip install datasets)") from None
    yield from load_from_disk(str(path))


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    rows = list(iter_rows(path))
    if not rows:
        raise OpenK1Error(f"{path}: no rows (empty file)")
    return rows


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


def to_problem(row: dict[str, Any], where: str) -> Problem:
    """Validate one dataset row (DESIGN.md) into a Problem."""
    prompt = _field(row, "prompt", str, where)
    kind = row.get("type", "math")
    if kind not in PROBLEM_TYPES:
        raise OpenK1Error(f"{where}: field 'type' must be one of {', '.join(PROBLEM_TYPES)}, "
                          f"got {kind!r}")
    answer = row.get("answer", "") if kind == "code" else _field(row, "answer", (str, int, float), where)
    tests = row.get("tests") or []
    if kind == "code" and not tests:
        raise OpenK1Error(f"{where}: missing field 'tests' (needed for type code)")
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
    )


def load_problems(path: str | Path) -> list[Problem]:
    """All rows of a problem dataset, validated; ids default to the row number."""
    problems = []
    for n, row in enumerate(read_rows(path), start=1):
        problem = to_problem(row, f"{path}: row {n}")
        problems.append(problem if problem.id else _with_id(problem, str(n)))
    return problems


def _with_id(problem: Problem, pid: str) -> Problem:
    from dataclasses import replace

    return replace(problem, id=pid)


def load_sft_rows(path: str | Path) -> list[tuple[str, str]]:
    """(prompt, response) pairs; `messages` rows are handled by the SFT stage's chat template."""
    pairs = []
    for n, row in enumerate(read_rows(path), start=1):
        where = f"{path}: row {n}"
        pairs.append((_field(row, "prompt", str, where), _field(row, "response", str, where)))
    return pairs


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
