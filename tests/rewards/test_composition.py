"""Reward composition: per-type weighted terms (hand-computed sums), the unchanged default path,
the process pool, model-based terms batched in-process, and config validation."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from openk1.config import build
from openk1.errors import OpenK1Error
from openk1.rewards import scoring
from openk1.rewards.base import Score
from openk1.rewards.scoring import REWARD_FUNCTIONS, RewardConfig, RewardTerm, score_many, score_one
from openk1.sandbox import INSTALL_HINT
from openk1.types import Problem

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason=INSTALL_HINT)
SIX = Problem("What is 2 * 3?", "6", "math")
ADD = Problem(
    "Add.",
    "",
    "code",
    tests=tuple(
        {"input": f"{a} {b}", "output": str(a + b)} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]
    ),
)
# right on the first three tests (a < 7), wrong on the last: code = 0, code_fraction = 3/4
MOSTLY = "```python\na, b = map(int, input().split())\nprint(a + b if a < 7 else 0)\n```"


class Echo:
    """A batched stub verifier: reward = float(response); records the batches it was given."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def __call__(self, response: str, problem: Problem) -> Score:
        return self.score_batch([response], [problem])[0]

    def score_batch(self, responses: list[str], problems: list[Problem]) -> list[Score]:
        self.batches.append(list(responses))
        return [Score(float(r), "echo", {"n": len(responses)}) for r in responses]


@pytest.fixture()
def echo(monkeypatch: pytest.MonkeyPatch) -> Echo:
    stub = Echo()
    monkeypatch.setitem(REWARD_FUNCTIONS, "echo", lambda term: stub)
    scoring._cached_verifier.cache_clear()
    yield stub
    scoring._cached_verifier.cache_clear()


def test_default_config_is_math_and_code() -> None:
    cfg = RewardConfig()
    assert [(t.name, t.weight) for t in cfg.terms("math")] == [("math", 1.0)]
    assert [(t.name, t.weight) for t in cfg.terms("code")] == [("code", 1.0)]
    assert cfg.terms("freeform") == []
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_no_config_keeps_the_plain_verifiers() -> None:
    responses = ["so \\boxed{6}", "\\boxed{7}"]
    plain = score_many(responses, [SIX, SIX])
    assert plain == [score_one(r, SIX) for r in responses]
    assert [(s.reward, s.verdict) for s in plain] == [(1.0, "correct"), (0.0, "wrong")]
    assert plain[0].details == {"extracted": "6", "path": "fast"}


def test_weighted_math_terms_by_hand() -> None:
    cfg = build(
        RewardConfig, {"math": [{"name": "math", "weight": 0.5}, {"name": "math", "weight": 0.25}]}
    )
    right, wrong = score_many(["\\boxed{6}", "\\boxed{7}"], [SIX, SIX], rewards=cfg)
    assert right.reward == 0.75 and right.verdict == "correct"  # 0.5 * 1 + 0.25 * 1
    assert wrong.reward == 0.0 and wrong.verdict == "wrong"  # 0.5 * 0 + 0.25 * 0
    assert [(t["name"], t["weight"], t["reward"]) for t in right.details["terms"]] == [
        ("math", 0.5, 1.0),
        ("math", 0.25, 1.0),
    ]
    assert right.details["terms"][0]["details"] == {"extracted": "6", "path": "fast"}


@needs_bwrap
@pytest.mark.parametrize("workers", [0, 2])
def test_code_terms_weighted_in_and_out_of_process(workers: int) -> None:
    cfg = build(
        RewardConfig,
        {
            "code": [{"name": "code", "weight": 0.5}, {"name": "code_fraction", "weight": 2.0}],
            "math": [{"name": "math", "weight": -1.0}],
        },
    )
    code, math = score_many([MOSTLY, "\\boxed{6}"], [ADD, SIX], workers=workers, rewards=cfg)
    assert code.reward == 1.5  # 0.5 * 0 (a test fails) + 2.0 * 3/4 (3 of 4 pass)
    assert code.verdict == "wrong_answer"  # the first term's verdict
    assert [t["verdict"] for t in code.details["terms"]] == ["wrong_answer", "wrong_answer"]
    assert math.reward == -1.0  # -1.0 * 1


def test_model_terms_run_batched_in_process(echo: Echo) -> None:
    free = [Problem(f"q{i}", "a", "freeform") for i in range(3)]
    cfg = build(
        RewardConfig,
        {
            "freeform": [
                {"name": "echo", "weight": 0.5, "path": "x"},
                {"name": "math", "weight": 2.0},
            ]
        },
    )
    scores = score_many(["0.2", "1", "4"], free, workers=2, rewards=cfg)
    assert echo.batches == [["0.2", "1", "4"]]  # one call, every freeform row
    # 0.5 * 0.2 + 2.0 * 0 (the answer "a" is no number); 0.5 * 1 + 0; 0.5 * 4 + 0
    assert [s.reward for s in scores] == [0.1, 0.5, 2.0]
    assert [s.verdict for s in scores] == ["echo"] * 3
    assert [t["verdict"] for t in scores[0].details["terms"]] == ["echo", "no_answer"]


def test_failing_model_term_scores_error_not_crash(echo: Echo) -> None:
    cfg = build(RewardConfig, {"freeform": [{"name": "echo", "path": "x"}]})
    free = Problem("q", "a", "freeform")
    scores = score_many(["1", "oops"], [free, free], rewards=cfg)  # float("oops") raises
    assert [(s.reward, s.verdict) for s in scores] == [(0.0, "error")] * 2
    assert "ValueError" in scores[1].details["terms"][0]["details"]["error"]


def test_type_without_terms_and_mixed_batch(echo: Echo) -> None:
    cfg = build(RewardConfig, {"code": []})
    scores = score_many(
        ["\\boxed{6}", "x", "y"], [SIX, ADD, Problem("q", "a", "freeform")], rewards=cfg
    )
    assert [(s.reward, s.verdict) for s in scores] == [
        (1.0, "correct"),
        (0.0, "unsupported_type"),
        (0.0, "unsupported_type"),
    ]
    assert echo.batches == []


def test_real_model_terms_on_tiny_model(tiny_model_dir: Path) -> None:
    cfg = build(
        RewardConfig,
        {
            "freeform": [
                {
                    "name": "reward_model",
                    "weight": 1.0,
                    "path": str(tiny_model_dir),
                    "options": {"soft": True},
                },
                {
                    "name": "cot_verifier",
                    "weight": 0.5,
                    "path": str(tiny_model_dir),
                    "options": {"max_new_tokens": 4, "default_reward": 0.5},
                },
            ]
        },
    )
    problem = Problem("1+1=?", "2", "freeform")
    s1, s2 = score_many(["2", "3"], [problem, problem], rewards=cfg)
    rm, cot = s1.details["terms"]
    assert (rm["verdict"], cot["verdict"], cot["reward"]) == (s1.verdict, "cot_malformed", 0.5)
    assert s1.reward == pytest.approx(rm["details"]["probability"] + 0.5 * 0.5)
    assert s2.details["terms"][0]["details"]["probability"] != rm["details"]["probability"]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"math": [{"name": "nope"}]}, "math.0.name: unknown reward function 'nope'"),
        ({"freeform": [{"name": "reward_model"}]}, "needs `path`"),
        ({"freeform": [{"name": "math", "wieght": 1}]}, "freeform.0.wieght: unknown key"),
        ({"essay": []}, "essay: unknown key"),
    ],
)
def test_bad_config_is_an_error_naming_the_key(values: dict, message: str) -> None:
    with pytest.raises(OpenK1Error, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(RewardConfig, values, source="rl.yaml")


def test_bad_options_are_an_error() -> None:
    cfg = RewardConfig(math=[RewardTerm(name="math", options={"strict": True})])
    with pytest.raises(OpenK1Error, match="rewards: math: bad options"):
        score_many(["\\boxed{6}"], [SIX], rewards=cfg)
