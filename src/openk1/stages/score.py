"""`openk1 score`: verify every row (`response` + its problem fields) and write it back with
`reward`, `verdict` and `details`. Rows are scored in parallel worker processes; a row that
cannot be scored gets reward 0 and a verdict saying why."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from openk1.config import StageConfig
from openk1.data.io import read_rows, to_problem, write_jsonl
from openk1.errors import OpenK1Error
from openk1.rewards.scoring import score_many


class ScoreConfig(StageConfig):
    input: str = ""
    workers: int = 0               # 0 = one per CPU core


def run(cfg: ScoreConfig) -> dict[str, Any]:
    source = cfg.input or cfg.data
    if not source or not cfg.out:
        raise OpenK1Error("score: needs --input FILE and --out FILE")
    rows = read_rows(source)
    for n, row in enumerate(rows, start=1):
        if not isinstance(row.get("response"), str):
            raise OpenK1Error(f"{source}: row {n}: missing field 'response'")
    problems = [to_problem(row, f"{source}: row {n}") for n, row in enumerate(rows, start=1)]
    workers = cfg.workers or os.cpu_count() or 1
    scores = score_many([r["response"] for r in rows], problems, workers)
    write_jsonl(cfg.out, [{**row, "reward": s.reward, "verdict": s.verdict, "details": s.details}
                          for row, s in zip(rows, scores)])
    return {"rows": len(rows), "mean_reward": sum(s.reward for s in scores) / len(scores),
            "verdicts": dict(Counter(s.verdict for s in scores))}
