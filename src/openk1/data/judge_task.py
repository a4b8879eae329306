"""A labelled judging task where telling right from wrong takes a few steps of arithmetic: the
test bed for the classic vs chain-of-thought reward model comparison (report §2.3.5).

Each row is what `openk1 rm train` reads, plus the worked check a CoT reward model learns:

    prompt:    What is 5+8?
    answer:    13
    response:  \\boxed{3*4+1}                 <- an unevaluated a*b+c (a, b in 2..9, c in 0..9)
    label:     1                              <- value(response) == answer
    reasoning: 3*4+1 = 12+1 = 13; reference 13; 1 1 same, 3 3 same; equal

A wrong response is off by 1 or 2 (`DELTAS`), so its size gives nothing away; a fraction
`number_rate` of responses is a plain number (`\\boxed{14}`, reasoning `14; reference 13; 1 1
same, 4 3 differ; not equal`). Labels are exactly balanced (half the rows each, in seeded random
order). For an expression no string match decides: its value must be computed. The digit pairs
make the final comparison local (two digits just written); a check ending `reference 13; equal`
was judged wrongly by a tiny model even where both numbers were right (docs/rewards.md).
"""

from __future__ import annotations

import random
from typing import Any

DELTAS = (-2, -1, 1, 2)   # how far a wrong response's value is from the reference
FACTORS = range(2, 10)    # a, b of a*b+c
ADDENDS = range(10)       # c of a*b+c


def expression(rng: random.Random) -> tuple[int, int, int]:
    """A random (a, b, c) of the response's a*b+c."""
    return rng.choice(FACTORS), rng.choice(FACTORS), rng.choice(ADDENDS)


def worked_check(response: tuple[int, int, int] | int, reference: int) -> str:
    """The evaluation written out step by step, then the comparison digit by digit (each
    decision made on two digits just written), then the conclusion.

    >>> worked_check((3, 4, 1), 13)
    '3*4+1 = 12+1 = 13; reference 13; 1 1 same, 3 3 same; equal'
    >>> worked_check(9, 11)
    '9; reference 11; 0 1 differ, 9 1 differ; not equal'
    """
    if isinstance(response, int):
        steps, value = f"{response}", response
    else:
        a, b, c = response
        value = a * b + c
        steps = f"{a}*{b}+{c} = {a * b}+{c} = {value}"
    width = max(len(str(value)), len(str(reference)))
    pairs = zip(str(value).zfill(width), str(reference).zfill(width))
    digits = ", ".join(f"{x} {y} {'same' if x == y else 'differ'}" for x, y in pairs)
    verdict = "equal" if value == reference else "not equal"
    return f"{steps}; reference {reference}; {digits}; {verdict}"


def judge_row(rng: random.Random, correct: bool, number_rate: float) -> dict[str, Any]:
    """One labelled row: a response a*b+c (or its value written out) against a reference equal
    to its value (correct) or off by one of DELTAS."""
    a, b, c = expression(rng)
    value = a * b + c                                           # >= 4, so reference >= 2
    reference = value if correct else value + rng.choice(DELTAS)
    plain = rng.random() < number_rate
    shown: tuple[int, int, int] | int = value if plain else (a, b, c)
    left = rng.randint(1, reference - 1)
    return {
        "prompt": f"What is {left}+{reference - left}?",
        "answer": str(reference),
        "response": f"\\boxed{{{value if plain else f'{a}*{b}+{c}'}}}",
        "label": int(correct),
        "reasoning": worked_check(shown, reference),
    }


def make_judge_rows(n: int, seed: int = 0, number_rate: float = 0.25) -> list[dict[str, Any]]:
    """`n` rows, labels exactly balanced (n // 2 wrong, the rest right), order seeded.

    >>> rows = make_judge_rows(4, seed=1)
    >>> sorted(r["label"] for r in rows), rows == make_judge_rows(4, seed=1)
    ([0, 0, 1, 1], True)
    """
    rng = random.Random(f"judge-{seed}")
    labels = [i >= n // 2 for i in range(n)]
    rng.shuffle(labels)
    return [judge_row(rng, correct, number_rate) for correct in labels]
