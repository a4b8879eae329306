"""The synthetic task's long trace: exact text, optional re-verification lines, verifiable answers."""

import random

from openk1.data.synthetic import TaskConfig, long_response, make_task
from openk1.rewards.math import verify_math
from openk1.types import Problem


def test_long_trace_with_every_reflection_line():
    # 58 + 24: units 8+4=12 carry 1; tens 5+2+1=8 carry 0; 82 - 24 = 58
    assert long_response(58, 24, random.Random(0), slip_rate=0.0, reflection_rate=1.0) == (
        "plan 2 columns\n8+4=12 c1\n5+2+1=8 c0\ncheck 82-24=58 ok\n"
        "recheck 58+24=82 ok\nverify 8+4=12 ok\nreflect carries ok\nso the answer is 82\n\\boxed{82}")


def test_no_reflection_lines_at_rate_zero():
    assert long_response(58, 24, random.Random(0), slip_rate=0.0) == (
        "plan 2 columns\n8+4=12 c1\n5+2+1=8 c0\ncheck 82-24=58 ok\n\\boxed{82}")


def test_reflection_lines_appear_at_their_rate_and_keep_the_answer_right():
    rows = make_task(TaskConfig(train_problems=2000, heldout_problems=10, max_difficulty=2,
                                reflection_rate=0.5))["train"]
    optional = sum(line.startswith(("recheck", "verify", "reflect", "so the answer"))
                   for r in rows for line in r["long_response"].split("\n"))
    assert abs(optional / (4 * len(rows)) - 0.5) < 0.02          # 8000 Bernoulli(0.5) draws: sd 0.0056
    assert all(verify_math(r["long_response"], Problem(r["prompt"], r["answer"])).reward == 1.0
               for r in rows[:300])
