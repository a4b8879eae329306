"""Synthetic arithmetic: a verifiable task family small enough for RL on a laptop CPU.

Problem at difficulty d (1..5): add an operand of d digits to one of 1..d digits. Each problem
has a reference answer and two response formats, written as ordinary dataset rows:

    short:  \\boxed{432}
    long:   plan: add 347 and 85 digit by digit from the right.
            7+5=12, write 2 carry 1
            4+8+1=12, wait: 4+8+1=13, write 3 carry 1      <- an occasional slip, corrected
            3+0+1=4, write 4 carry 0
            result 432
            check: 432-85=347, ok
            \\boxed{432}

The long trace shows planning (the plan line), evaluation (the check), reflection and
correction (the "wait:" lines). Carries make higher difficulties genuinely harder for a tiny
model, which leaves RL clear room to improve.
"""

from __future__ import annotations

import random
from typing import Any

from openk1.config import Section
from openk1.errors import OpenK1Error


class TaskConfig(Section):
    """Synthetic task sizes; all seeds derive from `seed`."""

    seed: int = 0
    train_problems: int = 4000
    heldout_problems: int = 200
    min_difficulty: int = 1
    max_difficulty: int = 3
    slip_rate: float = 0.15


def operands(rng: random.Random, difficulty: int) -> tuple[int, int]:
    a = rng.randint(10 ** (difficulty - 1), 10**difficulty - 1)
    b_digits = rng.randint(1, difficulty)
    return a, rng.randint(0 if b_digits == 1 else 10 ** (b_digits - 1), 10**b_digits - 1)


def prompt_text(a: int, b: int) -> str:
    return f"{a}+{b}="


def short_response(a: int, b: int) -> str:
    return f"\\boxed{{{a + b}}}"


def long_response(a: int, b: int, rng: random.Random, slip_rate: float) -> str:
    """Digit-by-digit addition with a plan, occasional corrected slips and a final check."""
    lines = [f"plan: add {a} and {b} digit by digit from the right."]
    da, db = str(a)[::-1], str(b)[::-1]
    carry = 0
    for i in range(max(len(da), len(db))):
        x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
        expr = f"{x}+{y}" + (f"+{carry}" if carry else "")
        total = x + y + carry
        slip = f"{expr}={total + rng.choice((-1, 1)) if total else 1}, wait: " if rng.random() < slip_rate else ""
        carry = total // 10
        lines.append(f"{slip}{expr}={total}, write {total % 10} carry {carry}")
    lines += [f"result {a + b}", f"check: {a + b}-{b}={a}, ok", short_response(a, b)]
    return "\n".join(lines)


def make_row(rng: random.Random, difficulty: int, pid: str, slip_rate: float) -> dict[str, Any]:
    a, b = operands(rng, difficulty)
    return {
        "id": pid,
        "prompt": prompt_text(a, b),
        "answer": str(a + b),
        "type": "math",
        "domain": "arithmetic",
        "difficulty": difficulty,
        "short_response": short_response(a, b),
        "long_response": long_response(a, b, rng, slip_rate),
    }


def make_split(cfg: TaskConfig, n: int, split: str, exclude: set[str]) -> list[dict[str, Any]]:
    """`n` distinct problems, difficulties uniform in [min, max], none of whose prompt is excluded."""
    rng = random.Random(f"{cfg.seed}-{split}")
    rows: list[dict[str, Any]] = []
    seen = set(exclude)
    for _ in range(100 * n + 1000):
        if len(rows) == n:
            return rows
        difficulty = rng.randint(cfg.min_difficulty, cfg.max_difficulty)
        row = make_row(rng, difficulty, f"{split}-{len(rows)}", cfg.slip_rate)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    raise OpenK1Error(f"task: cannot draw {n} distinct {split} problems at difficulties "
                      f"{cfg.min_difficulty}..{cfg.max_difficulty}; lower the count or raise max_difficulty")


def make_task(cfg: TaskConfig) -> dict[str, list[dict[str, Any]]]:
    """{"train": rows, "heldout": rows}: held-out prompts never appear in train."""
    heldout = make_split(cfg, cfg.heldout_problems, "heldout", set())
    train = make_split(cfg, cfg.train_problems, "train", {r["prompt"] for r in heldout})
    return {"train": train, "heldout": heldout}


def sft_rows(rows: list[dict[str, Any]], fmt: str) -> list[dict[str, Any]]:
    """Rows for `openk1 sft`: prompt + the `short` or `long` response."""
    return [{"prompt": r["prompt"], "response": r[f"{fmt}_response"]} for r in rows]
