"""A candidate prompt's record as it passes the curation filters (report §2.1)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from openk1.types import Problem


@dataclass
class Row:
    n: int                          # 1-based input row number
    data: dict[str, Any]            # the input row (a copy) + the fields curate adds
    where: str = ""                 # where errors say the row is (data/io.py `location`)
    problem: Problem | None = None
    reason: str = ""                # why it was dropped ("" while kept)

    @property
    def name(self) -> str:
        return str(self.data["id"]) if self.data.get("id") not in (None, "") else f"row {self.n}"


def drop(row: Row, reason: str, counts: Counter[str], **fields: Any) -> None:
    """Drop `row` for `reason` (counted once); `fields` (reason_detail, ...) go on the row."""
    row.reason = reason
    row.data.update({"reason": reason, **fields})
    counts[reason] += 1


def alive(rows: list[Row]) -> list[Row]:
    """The rows no filter has dropped yet."""
    return [r for r in rows if not r.reason]
