"""`openk1 code-tests` on toy problems: kept rows with their tests, every input field preserved,
summary counts, report defaults, and one-line errors for bad rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from openk1.cli import main
from openk1.data.io import load_problems, write_jsonl
from openk1.rewards.code import verify_code
from openk1.sandbox import INSTALL_HINT
from openk1.stages.code_tests import CodeTestsStageConfig, recipe

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason=INSTALL_HINT)
ADD = "a, b = map(int, input().split())\nprint(a + b)\n"
ZERO = "input()\nprint(0)\n"
GEN = "import random\nprint(random.randint(1, 1000), random.randint(1, 1000))\n"


def test_defaults_are_the_reports() -> None:
    cfg = CodeTestsStageConfig()
    assert (cfg.num_inputs, cfg.max_solutions, cfg.min_agree, cfg.min_passing) == (50, 10, 7, 9)
    lib = recipe(cfg)
    assert (lib.num_inputs, lib.max_solutions, lib.min_agree, lib.min_passing) == (50, 10, 7, 9)
    assert (lib.run_limits.cpu_s, lib.run_limits.wall_s) == (2.0, 5.0)
    assert (cfg.min_tests, lib.min_tests, lib.generator_attempts, lib.seed) == (40, 40, 4, 0)


@needs_bwrap
def test_code_tests_keeps_agreeing_problems(tmp_path: Path) -> None:
    # 4 references: an input needs ceil(7*4/10) = 3 agreeing outputs, a problem ceil(9*4/10) = 4
    # passing references. "kept": 4 x ADD. "dropped": 3 x ADD agree (valid tests) but ZERO fails.
    rows = [
        {
            "prompt": "Add two numbers.",
            "solutions": [ADD] * 4,
            "generator": GEN,
            "type": "code",
            "id": "kept",
            "difficulty": 2,
            "source": "toy",
        },
        {
            "prompt": "Add again.",
            "solutions": [ADD] * 3 + [ZERO],
            "generator": GEN,
            "id": "dropped",
        },
    ]
    data, out = tmp_path / "in.jsonl", tmp_path / "run"
    write_jsonl(data, rows)
    assert (
        main(
            [
                "code-tests",
                "--data",
                str(data),
                "--out",
                str(out),
                "--set",
                "num_inputs=3",
                "run_cpu_s=1.0",
                "generator_cpu_s=1.0",
            ]
        )
        == 0
    )
    kept = [json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()]
    assert len(kept) == 1 and {k: v for k, v in kept[0].items() if k != "tests"} == rows[0]
    assert len(kept[0]["tests"]) == 3
    for test in kept[0]["tests"]:
        a, b = map(int, test["input"].split())
        assert test["output"] == str(a + b)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["problems"], summary["kept"], summary["kept_fraction"]) == (2, 1, 0.5)
    assert summary["reasons"] == {"kept": 1, "too_few_passing": 1} and summary["tests_total"] == 3
    assert [
        (p["row"], p["valid_tests"], p["solutions_passing"]) for p in summary["per_problem"]
    ] == [(1, 3, 4), (2, 3, 3)]
    assert (out / "config.yaml").exists() and len(
        (out / "metrics.jsonl").read_text().splitlines()
    ) == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    problem = load_problems(out / "problems.jsonl")[0]  # a valid RL dataset
    assert verify_code(f"```python\n{ADD}```", problem).verdict == "accepted"


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "p", "generator": "g"}, "line 2: missing field 'solutions'"),
        (
            {"prompt": "p", "solutions": "print(1)", "generator": "g"},
            "line 2: field 'solutions' must be a list",
        ),
        (
            {"prompt": "p", "solutions": [1], "generator": "g"},
            "line 2: field 'solutions' must be a list",
        ),
        ({"prompt": "p", "solutions": [], "generator": 3}, "line 2: field 'generator' must be str"),
        ({"solutions": [], "generator": "g"}, "line 2: missing field 'prompt'"),
        ({"prompt": "p", "solutions": [ADD]}, "line 2: missing field 'generator' (give --model"),
        ({"prompt": "p", "solutions": [ADD], "generator": " "}, "line 2: empty field 'generator'"),
        (
            {"prompt": "p", "solutions": [], "generator": "g", "checker": 1},
            "line 2: field 'checker' must be str",
        ),
        (
            {"prompt": "p", "solutions": [], "generator": "g", "type": "math"},
            "line 2: field 'type' must be 'code'",
        ),
    ],
)
def test_bad_row_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], row: dict, message: str
) -> None:
    data, out = tmp_path / "in.jsonl", tmp_path / "run"
    write_jsonl(data, [{"prompt": "p", "solutions": [ADD], "generator": GEN}, row])
    assert main(["code-tests", "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{data}: {message}" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing written before validation
