"""k1.5 test-case generation: thresholds on hand-built vote tables, then a toy problem end to end."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from openk1.rewards.code_tests import (
    CodeTestsConfig,
    _decide,
    generate_inputs,
    generate_tests,
    generate_tests_for_problems,
    generator_sandbox,
    majority_outputs,
    passing_solutions,
    scaled_threshold,
)
from openk1.sandbox import INSTALL_HINT, Limits, SandboxPool
from openk1.types import Problem

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason=INSTALL_HINT)
FAST = Limits(wall_s=2.0, cpu_s=1.0, memory_mb=256)
ADD = "a, b = map(int, input().split())\nprint(a + b)\n"
SUB = "a, b = map(int, input().split())\nprint(a - b)\n"
ZERO = "input()\nprint(0)\n"
GEN = "import random\nprint(random.randint(1, 10**9), random.randint(1, 10**9))\n"


def _cfg(**kw: object) -> CodeTestsConfig:
    base = {"num_inputs": 6, "run_limits": FAST, "generator_limits": FAST, "workers": 2}
    return CodeTestsConfig(**{**base, **kw})  # type: ignore[arg-type]


# ---------------------------------------------------------------- thresholds, by hand


def test_majority_needs_seven_of_ten() -> None:
    # one column per input; 10 solutions (rows)
    seven = ["3"] * 7 + ["4", "5", None]  # 7 agree -> valid, expected "3"
    six = ["3"] * 6 + ["4"] * 4  # 6 agree -> invalid
    failed = ["9"] * 6 + [None] * 4  # failures never vote: 6 -> invalid
    rows = [list(col) for col in zip(seven, six, failed)]
    assert majority_outputs(rows, min_agree=7) == ["3", None, None]
    assert majority_outputs(rows, min_agree=6) == ["3", "3", "9"]


def test_problem_kept_when_nine_of_ten_pass() -> None:
    expected = ["3", None, "7"]  # input 1 was not a valid test
    good, off_on_invalid, wrong = ["3", "x", "7"], ["3", "y", "7"], ["3", "x", "8"]
    nine = passing_solutions([good] * 8 + [off_on_invalid, wrong], expected)
    assert sum(nine) == 9 and nine[-1] is False  # invalid inputs never fail a solution
    counts = {"solutions": 10, "unique_inputs": 3, "valid_tests": 2, "min_passing": 9}
    assert _decide({**counts, "solutions_passing": 9}) == "kept"
    assert _decide({**counts, "solutions_passing": 8}) == "too_few_passing"
    assert _decide({**counts, "valid_tests": 0, "solutions_passing": 10}) == "no_valid_tests"
    assert _decide({**counts, "unique_inputs": 0, "solutions_passing": 10}) == "no_inputs"


def test_thresholds_scale_with_fewer_solutions() -> None:
    assert scaled_threshold(7, 10, 10) == 7
    assert scaled_threshold(7, 5, 10) == 4  # ceil(3.5)
    assert scaled_threshold(9, 5, 10) == 5  # ceil(4.5)
    assert scaled_threshold(9, 1, 10) == 1


# ---------------------------------------------------------------- end to end in the sandbox


@needs_bwrap
def test_generator_is_seeded_and_failures_counted() -> None:
    gen = "import sys, random\nif int(sys.argv[1]) % 3 == 0:\n    raise SystemExit(1)\nprint(random.random())\n"
    with SandboxPool(2, generator_sandbox(())) as pool:
        first, counts = generate_inputs(gen, _cfg(), pool)
        again, _ = generate_inputs(gen, _cfg(), pool)
    assert counts == {
        "inputs_generated": 4,
        "generator_failures": 2,
        "unique_inputs": 4,
    }  # seeds 0, 3 fail
    assert first == again  # the same seeds give the same inputs


@needs_bwrap
def test_toy_problem_two_wrong_of_ten_is_dropped() -> None:
    rows = [
        {"prompt": "add", "solutions": [ADD] * 8 + [SUB, ZERO], "generator": GEN, "type": "code"},
        {
            "prompt": "add",
            "solutions": [ADD] * 9 + [ZERO],
            "generator": GEN,
            "type": "code",
            "id": "b",
        },
        {"prompt": "none", "solutions": [], "generator": GEN, "type": "code"},
    ]
    kept, report = generate_tests_for_problems(rows, _cfg())
    first, second, third = report["per_problem"]
    assert {
        k: first[k]
        for k in ("inputs_generated", "unique_inputs", "valid_tests", "solutions_passing")
    } == {"inputs_generated": 6, "unique_inputs": 6, "valid_tests": 6, "solutions_passing": 8}
    assert (first["kept"], first["reason"]) == (False, "too_few_passing")
    assert (second["kept"], second["solutions_passing"], second["valid_tests"]) == (True, 9, 6)
    assert third["reason"] == "no_solutions"
    assert report["kept"] == 1 and report["reasons"] == {
        "too_few_passing": 1,
        "kept": 1,
        "no_solutions": 1,
    }
    assert kept[0]["id"] == "b" and len(kept[0]["tests"]) == 6
    a, b = map(int, kept[0]["tests"][0]["input"].split())
    assert kept[0]["tests"][0]["output"] == str(a + b)


@needs_bwrap
def test_inputs_without_agreement_are_dropped() -> None:
    # 6 agree on even inputs only; the 4 others print 0 on every input; 7 of 10 is required.
    parity = "a, b = map(int, input().split())\nprint(a + b if a % 2 == 0 else -1)\n"
    problem = Problem("add", "", "code", solutions=tuple([ADD] * 6 + [parity] * 1 + [ZERO] * 3))
    gen = "import sys\ns = int(sys.argv[1])\nprint(s, 1)\n"  # inputs "0 1" .. "5 1"
    with_tests, report = generate_tests(problem, gen, _cfg())
    assert report["valid_tests"] == 3  # seeds 0, 2, 4: 7 agree; odd seeds: only 6
    assert [t["input"] for t in with_tests.tests] == ["0 1\n", "2 1\n", "4 1\n"]
    assert report["solutions_passing"] == 7 and report["kept"] is False


@needs_bwrap
@pytest.mark.skipif(importlib.util.find_spec("cyaron") is None, reason="pip install cyaron")
def test_cyaron_generator_runs_in_sandbox() -> None:
    gen = "from cyaron import randint\nprint(randint(1, 100), randint(1, 100))\n"
    with SandboxPool(2, generator_sandbox(("cyaron", "colorful", "xeger"))) as pool:
        inputs, counts = generate_inputs(gen, _cfg(num_inputs=3), pool)
    assert counts["inputs_generated"] == 3
    assert all(len(line.split()) == 2 for line in inputs)


def test_generator_sandbox_skips_modules_without_a_spec(monkeypatch):
    """Ray's import leaves a `colorful` in sys.modules with __spec__ None, on which find_spec
    raises ValueError: such a module has no path to bind and is skipped, not an error."""
    import sys
    import types

    from openk1.rewards.code_tests import generator_sandbox
    from openk1.sandbox import module_spec

    def _on_disk(name: str) -> bool:
        return module_spec(name) is not None

    fake = types.ModuleType("specless_module")
    fake.__spec__ = None
    monkeypatch.setitem(sys.modules, "specless_module", fake)
    assert not _on_disk("specless_module") and _on_disk("json") and not _on_disk("no_such_module_xyz")
    generator_sandbox(["specless_module", "no_such_module_xyz"])    # no ValueError
