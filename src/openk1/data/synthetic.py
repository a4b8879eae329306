"""Synthetic arithmetic: a verifiable task family small enough for RL on a laptop CPU.

Problem at difficulty d (1..5) adds two operands whose digit counts come from `LEVELS`
(level 1: 2-digit + 1-digit, ..., level 5: 4-digit + 4-digit); every level has hundreds of
distinct problems or more, so held-out problems are never seen in training. Each problem
has a reference answer and two response formats, written as ordinary dataset rows:

    short:  \\boxed{432}
    long:   plan 3 columns
            7+5=12 c1
            4+8+1=12 wait 13 c1          <- an occasional slip, corrected
            3+0+1=4 c0
            check 432-85=347 ok
            recheck 347+85=432 ok        <- optional re-verification, each line with
            verify 7+5=12 ok                probability `reflection_rate`: the redundancy
            reflect carries ok              ("overthinking") long2short learns to drop
            so the answer is 432
            \\boxed{432}

The long trace shows planning (the plan line), evaluation (the check), reflection and
correction (the "wait" slips). Carries make higher difficulties genuinely harder for a tiny
model, which leaves RL clear room to improve. The optional lines after the check never change
the answer, so a response without them is as correct and about a third shorter (demo).
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import Field, model_validator

from openk1.config import Section
from openk1.errors import OpenK1Error


class TaskConfig(Section):
    """Synthetic task sizes; all seeds derive from `seed`."""

    seed: int = Field(0, description="seed every problem and trace derives from")
    train_problems: int = Field(4000, gt=0, description="training problems")
    heldout_problems: int = Field(200, gt=0, description="held-out problems (never in training)")
    min_difficulty: int = Field(1, ge=1, le=5,
                                description="easiest level (data/synthetic.py LEVELS: digits of the operands)")
    max_difficulty: int = Field(3, ge=1, le=5, description="hardest level")
    slip_rate: float = Field(0.15, ge=0.0, le=1.0,
                             description='chance of a corrected slip ("wait") per column of a long trace')
    reflection_rate: float = Field(0.0, ge=0.0, le=1.0,
                                   description="chance of each optional re-verification line (long format)")

    @model_validator(mode="after")
    def _levels(self) -> TaskConfig:
        if self.min_difficulty > self.max_difficulty:
            raise ValueError(f"min_difficulty ({self.min_difficulty}) must be <= max_difficulty "
                             f"({self.max_difficulty})")
        return self


# difficulty -> (digits of a, digits of b)
LEVELS: dict[int, tuple[int, int]] = {1: (2, 1), 2: (2, 2), 3: (3, 2), 4: (3, 3), 5: (4, 4)}


def number(rng: random.Random, digits: int) -> int:
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def operands(rng: random.Random, difficulty: int) -> tuple[int, int]:
    """Two operands of the level's sizes, in random order."""
    a_digits, b_digits = LEVELS[difficulty]
    a, b = number(rng, a_digits), number(rng, b_digits)
    return (a, b) if rng.random() < 0.5 else (b, a)


def prompt_text(a: int, b: int) -> str:
    return f"{a}+{b}="


def short_response(a: int, b: int) -> str:
    return f"\\boxed{{{a + b}}}"


def long_response(a: int, b: int, rng: random.Random, slip_rate: float,
                  reflection_rate: float = 0.0) -> str:
    """Column-by-column addition: a plan, occasional corrected slips, a final check and
    optional re-verification lines."""
    da, db = str(a)[::-1], str(b)[::-1]
    columns = max(len(da), len(db))
    lines, carry = [f"plan {columns} columns"], 0
    for i in range(columns):
        x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
        expr = f"{x}+{y}" + (f"+{carry}" if carry else "")
        total = x + y + carry
        slip = f"{abs(total + rng.choice((-1, 1)))} wait " if rng.random() < slip_rate else ""
        carry = total // 10
        lines.append(f"{expr}={slip}{total} c{carry}")
    x, y = a % 10, b % 10
    optional = [f"recheck {a}+{b}={a + b} ok", f"verify {x}+{y}={x + y} ok", "reflect carries ok",
                f"so the answer is {a + b}"]
    lines += [f"check {a + b}-{b}={a} ok"] + [line for line in optional if rng.random() < reflection_rate]
    return "\n".join(lines + [short_response(a, b)])


def make_row(rng: random.Random, difficulty: int, pid: str, slip_rate: float,
             reflection_rate: float = 0.0) -> dict[str, Any]:
    a, b = operands(rng, difficulty)
    return {
        "id": pid,
        "prompt": prompt_text(a, b),
        "answer": str(a + b),
        "type": "math",
        "domain": "arithmetic",
        "difficulty": difficulty,
        "short_response": short_response(a, b),
        "long_response": long_response(a, b, rng, slip_rate, reflection_rate),
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
        row = make_row(rng, difficulty, f"{split}-{len(rows)}", cfg.slip_rate, cfg.reflection_rate)
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
