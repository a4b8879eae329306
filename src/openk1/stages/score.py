"""`openk1 score`: verify every row (`response` + its problem fields) and write it back with
`reward`, `verdict` and `details`. Rows are scored in parallel worker processes; a row that
cannot be scored gets reward 0 and a verdict saying why."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field

from openk1.config import StageConfig
from openk1.data.io import read_located, to_problem, write_jsonl
from openk1.errors import OpenK1Error
from openk1.rewards.scoring import score_many


class ScoreConfig(StageConfig):
    """`--data` rows in, `--out` a JSONL file out (not a run directory)."""

    workers: int = Field(0, ge=0, description="verifier processes (0 = one per CPU core)")


def check_output(cfg: ScoreConfig) -> Path:
    """--out names a file that is new, or replaced by --overwrite; never a folder or --data."""
    if not cfg.data or not cfg.out:
        raise OpenK1Error("score: needs --data FILE (rows with `response`) and --out FILE")
    out = Path(cfg.out)
    if out.is_dir():
        raise OpenK1Error(f"{out}: --out of score is the JSONL file to write; this is a folder")
    if out.exists() and not cfg.overwrite:
        raise OpenK1Error(f"{out}: exists; replace it with --overwrite or choose another --out")
    if out.resolve() == Path(cfg.data.plain_path("score")).resolve():
        raise OpenK1Error(f"{out}: --out would replace --data; write the scores to another file")
    return out


def run(cfg: ScoreConfig) -> dict[str, Any]:
    check_output(cfg)
    located = read_located(cfg.data.path)
    rows = [row for _, row in located]
    for where, row in located:
        if not isinstance(row.get("response"), str):
            raise OpenK1Error(f"{where}: missing field 'response'")
    problems = [to_problem(row, where) for where, row in located]
    workers = cfg.workers or os.cpu_count() or 1
    scores = score_many([r["response"] for r in rows], problems, workers)
    write_jsonl(cfg.out, [{**row, "reward": s.reward, "verdict": s.verdict, "details": s.details}
                          for row, s in zip(rows, scores)])
    return {"rows": len(rows), "mean_reward": sum(s.reward for s in scores) / len(scores),
            "verdicts": dict(Counter(s.verdict for s in scores))}
