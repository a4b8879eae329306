"""Program-style code tests ({"program", "entry_point"}: HumanEval `check`, MBPP asserts).

Honest submissions pass, wrong ones fail, and each way of passing without solving fails the row:
exiting early, returning an object that fakes equality, patching what the test uses, and
forging the completion line. Where an attack beats the usual same-module harness (solution, test
and `check(entry_point)` run as one script, exit code 0 = pass), `_naive_passes` shows it, so the
attack is real and only our harness stops it.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from openk1.data.io import load_problems
from openk1.errors import OpenK1Error
from openk1.rewards import code
from openk1.rewards.code import Program, bad_test_reason, classify_test, run_program_test, verify_code
from openk1.rewards.code_tests import generate_tests_for_problems, has_program_tests
from openk1.sandbox import INSTALL_HINT, Limits, Sandbox
from openk1.sandbox.program_harness import decode, encode, is_plain
from openk1.types import Problem

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason=INSTALL_HINT)
FAST = Limits(wall_s=2.0, cpu_s=1.0, memory_mb=256)

# HumanEval/0, its real test and entry point
HUMANEVAL_TEST = """

METADATA = {
    'author': 'jt',
    'dataset': 'test'
}


def check(candidate):
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.8) == False
    assert candidate([1.0, 2.0, 3.0, 4.0, 5.0, 2.0], 0.1) == True
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 0.5) == False

"""
HUMANEVAL_SOLUTION = """from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    for idx, elem in enumerate(numbers):
        for idx2, elem2 in enumerate(numbers):
            if idx != idx2 and abs(elem - elem2) < threshold:
                return True
    return False
"""
HUMANEVAL = {"program": HUMANEVAL_TEST, "entry_point": "has_close_elements"}

# MBPP rows: test_setup_code and test_list, joined into one program without entry point
MBPP_ROWS: list[dict[str, Any]] = [
    {"test_setup_code": "", "test_list": [
        "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
        "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))",
        "assert set(similar_elements((11, 12, 14, 13),(17, 15, 14, 13))) == set((13, 14))"]},
    {"test_setup_code": "", "test_list": [
        "assert math.isclose(volume_sphere(10), 4188.790204786391, rel_tol=0.001)",
        "assert math.isclose(volume_sphere(25), 65449.84694978735, rel_tol=0.001)"]},
]
MBPP_SOLUTION = """import math


def similar_elements(test_tup1, test_tup2):
    return tuple(set(test_tup1) & set(test_tup2))


def volume_sphere(r):
    return (4 / 3) * math.pi * r * r * r
"""
# a small row whose test uses what the attacks below patch
SQUARE_TEST = "def check(candidate):\n    assert candidate(3) == 9\n    assert candidate(-2) == 4\n"
SQUARE = {"program": SQUARE_TEST, "entry_point": "square"}


def mbpp_program(row: dict[str, Any]) -> dict[str, Any]:
    """An MBPP row's tests as one program test (no entry point: the asserts name the function)."""
    return {"program": "\n".join([row["test_setup_code"], *row["test_list"]])}


@pytest.fixture(scope="module")
def box() -> Sandbox:
    return Sandbox()


def _fence(source: str, lang: str = "python") -> str:
    return f"My solution:\n```{lang}\n{source}```\n"


def _score(box: Sandbox, source: str, *tests: dict[str, Any], limits: Limits = FAST) -> Any:
    return verify_code(_fence(source), Problem("p", "", "code", tests=tests), limits=limits, sandbox=box)


def _naive_passes(source: str, test: dict[str, Any], tmp_path: Path) -> bool:
    """Whether `source` passes `test` under the usual harness: one script, exit code 0 = pass."""
    entry = test.get("entry_point")
    script = tmp_path / "naive.py"
    script.write_text(source + "\n" + test["program"] + (f"\ncheck({entry})\n" if entry else ""))
    done = subprocess.run([sys.executable, "-I", str(script)], cwd=tmp_path, capture_output=True, timeout=30)
    return done.returncode == 0


# ---------------------------------------------------------------- row format and validation


def test_program_tests_are_classified_and_validated() -> None:
    assert classify_test(HUMANEVAL) == "program" and bad_test_reason(HUMANEVAL) is None
    assert classify_test({"program": "assert 1", "entry_point": None}) == "program"  # Parquet null
    assert classify_test({"program": None, "input": "1", "output": "1"}) == "stdio"
    bad = {
        "": "'program' must be a non-empty string",
        "   \n": "'program' must be a non-empty string",
        3: "'program' must be a non-empty string",
    }
    for program, reason in bad.items():
        assert classify_test({"program": program}) is None
        assert str(bad_test_reason({"program": program})).startswith(reason)
    for entry in ("1f", "f-g", "class", 7, ""):
        test = {"program": "assert 1", "entry_point": entry}
        assert classify_test(test) is None
        assert "'entry_point' must be a Python identifier" in str(bad_test_reason(test))
    assert "or 'program'" in str(bad_test_reason({"entry_point": "f"}))


def test_loader_accepts_program_rows_and_rejects_bad_ones(tmp_path: Path) -> None:
    good = {"prompt": "p", "type": "code",
            "tests": [HUMANEVAL, mbpp_program(MBPP_ROWS[0]), {"call": "f(1)", "expected": "2"}]}
    bad = {"prompt": "p", "type": "code", "tests": [{"program": "assert 1", "entry_point": "no good"}]}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(good) + "\n")
    (problem,) = load_problems(path)
    assert [classify_test(t) for t in problem.tests] == ["program", "program", "call"]  # mixing is allowed
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(OpenK1Error, match=r"line 2: .*'entry_point' must be a Python identifier"):
        load_problems(path)


def test_values_cross_as_exact_builtins_only() -> None:
    value = [1, -2.5, float("inf"), 3 + 4j, "é\ud800", b"\x00", None, True, (1, (2,)), {1: {"a": [2]}},
             {1, 2}, frozenset({3}), 10**400]
    assert decode(json.loads(json.dumps(encode(value)))) == value
    assert type(decode(encode(True))) is bool and type(decode(encode((1,)))) is tuple

    class Fake(int):
        def __eq__(self, other: object) -> bool:
            return True

    for fake in (Fake(1), [Fake(1)], {"k": Fake(1)}, (x for x in ())):
        assert not is_plain(fake)
        with pytest.raises(TypeError):
            encode(fake)
    for broken in (["I"], ["Q", 1], ["L", "ab"], ["C", 1, 2], {"a": 1}, ["D", [[["L", []], None]]], ["D", [[1]]]):
        with pytest.raises((ValueError, TypeError)):
            decode(broken)


def test_cpp_cannot_answer_program_tests() -> None:
    score = verify_code(_fence("int main(){}\n", "cpp"), Problem("p", "", "code", tests=(HUMANEVAL,)))
    assert (score.verdict, score.details["reason"]) == ("unsupported_language", "call and program tests need Python")


def test_code_tests_tooling_excludes_program_rows(refuse_sandbox_runs) -> None:
    refuse_sandbox_runs("a program-test row")

    def never(requests: list[str], k: int) -> list[str]:
        raise AssertionError("the model was asked for a generator")

    rows = [{"prompt": "HumanEval/0", "solutions": [HUMANEVAL_SOLUTION], "tests": [HUMANEVAL], "id": "he0"}]
    assert has_program_tests(rows[0]) and not has_program_tests({"tests": [{"input": "1", "output": "1"}]})
    kept, report = generate_tests_for_problems(rows, writer=never)
    assert kept == [] and report["reasons"] == {"program_tests": 1}
    assert report["per_problem"][0]["id"] == "he0"


# ---------------------------------------------------------------- honest, wrong, slow


@needs_bwrap
def test_humaneval_style_honest_passes_wrong_fails(box: Sandbox) -> None:
    honest = _score(box, HUMANEVAL_SOLUTION, HUMANEVAL)
    assert (honest.reward, honest.verdict) == (1.0, "accepted")
    assert (honest.details["verdicts"], honest.details["passed"], honest.details["total"]) == (["AC"], 1, 1)
    wrong = _score(box, "def has_close_elements(numbers, threshold):\n    return True\n", HUMANEVAL)
    assert (wrong.reward, wrong.verdict, wrong.details["verdicts"]) == (0.0, "wrong_answer", ["WA"])
    assert "AssertionError" in wrong.details["first_failure"]["stderr"]
    crash = _score(box, "def has_close_elements(numbers, threshold):\n    return 1 / 0\n", HUMANEVAL)
    assert (crash.reward, crash.verdict) == (0.0, "runtime_error")
    assert "ZeroDivisionError" in crash.details["first_failure"]["stderr"]
    missing = _score(box, "def other(numbers, threshold):\n    return True\n", HUMANEVAL)
    assert missing.verdict == "runtime_error"
    assert "defines no function 'has_close_elements'" in missing.details["first_failure"]["stderr"]


@needs_bwrap
def test_mbpp_style_honest_passes_wrong_fails(box: Sandbox) -> None:
    tests = [mbpp_program(row) for row in MBPP_ROWS]
    honest = _score(box, MBPP_SOLUTION, *tests)  # the test's math comes from the solution's import
    assert (honest.reward, honest.details["verdicts"]) == (1.0, ["AC", "AC"])
    wrong = MBPP_SOLUTION.replace("(4 / 3)", "(4 / 2)")
    score = verify_code(_fence(wrong), Problem("p", "", "code", tests=tuple(tests)), mode="fraction",
                        limits=FAST, sandbox=box)
    assert (score.reward, score.details["verdicts"]) == (0.5, ["AC", "WA"])


@needs_bwrap
def test_test_program_sees_exceptions_values_and_prints(box: Sandbox) -> None:
    program = (
        "def check(candidate):\n"
        "    print('from the test')\n"
        "    assert 'TABLE' not in globals() and 'root' in globals()\n"
        "    assert candidate(4) == 2.0 and LIMIT == [1, (2, 3)]\n"
        "    try:\n"
        "        candidate(-1)\n"
        "    except ValueError as e:\n"
        "        assert 'negative' in str(e)\n"
        "    else:\n"
        "        raise AssertionError('no ValueError')\n"
    )
    source = (
        "LIMIT = [1, (2, 3)]\n"
        "TABLE = [0] * 10**6  # too big to copy into the test's namespace\n"
        "def root(x):\n"
        "    print('noise')\n"
        "    if x < 0:\n"
        "        raise ValueError('negative input')\n"
        "    return x ** 0.5\n"
    )
    score = _score(box, source, {"program": program, "entry_point": "root"})
    assert score.reward == 1.0
    outcome = run_program_test(Program("python", source, {}, ()), {"program": program, "entry_point": "root"}, box,
                               FAST)
    assert outcome.got == "from the test"  # the test's stdout without the completion line
    assert "noise" in outcome.stderr  # the submission's stdout goes to stderr


@needs_bwrap
def test_timeouts_fail(box: Sandbox) -> None:
    for body in ("    while True:\n        pass\n", "    import time\n    time.sleep(100)\n"):
        score = _score(box, "def square(x):\n" + body, SQUARE)
        assert (score.reward, score.verdict) == (0.0, "time_limit_exceeded"), body
        assert score.details["wall_s"][0] < FAST.wall_s + 1.0


@needs_bwrap
def test_one_sandboxed_run_per_program_test(box: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[list[str]] = []
    real_run = Sandbox.run

    def counting(self: Sandbox, files: Any, cmd: Any, *args: Any, **kwargs: Any) -> Any:
        runs.append(sorted(files))
        return real_run(self, files, cmd, *args, **kwargs)

    monkeypatch.setattr(Sandbox, "run", counting)
    many = "\n".join(f"assert square({i}) == {i * i}" for i in range(200))  # 200 asserts, 200 calls
    score = _score(box, "def square(x):\n    return x * x\n", {"program": many})
    assert score.reward == 1.0 and runs == [["harness.py", "solution.py"]]
    runs.clear()
    two = _score(box, MBPP_SOLUTION, *[mbpp_program(row) for row in MBPP_ROWS])
    assert two.reward == 1.0 and len(runs) == 2  # one run per program test, whatever it asserts


# ---------------------------------------------------------------- attacks: (a) exiting early

EXITS = ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "exit()\n", "quit()\n", "raise SystemExit\n",
         "raise SystemExit(0)\n"]


@needs_bwrap
@pytest.mark.parametrize("exit_code", EXITS)
def test_exiting_early_fails(box: Sandbox, exit_code: str, tmp_path: Path) -> None:
    wrong = "def square(x):\n    return 0\n"
    at_import = exit_code + wrong
    during_call = "def square(x):\n" + "".join(f"    {line}\n" for line in exit_code.splitlines())
    for source in (at_import, during_call):
        assert _naive_passes(source, SQUARE, tmp_path), source
        score = _score(box, source, SQUARE)
        assert (score.reward, score.verdict) == (0.0, "wrong_answer"), source
        assert "exited" in score.details["first_failure"]["stderr"]


@needs_bwrap
def test_a_test_that_catches_everything_still_sees_the_exit(box: Sandbox) -> None:
    program = "try:\n    square(3)\nexcept BaseException:\n    pass\n"  # a test that tolerates errors
    score = _score(box, "import os\ndef square(x):\n    os._exit(0)\n", {"program": program})
    assert (score.reward, score.verdict) == (0.0, "wrong_answer")


# ---------------------------------------------------------------- attacks: (b) faking equality

FAKES = {
    "eq_object": "class E:\n    def __eq__(self, other):\n        return True\n",
    "int_subclass": "class E(int):\n    def __eq__(self, other):\n        return True\n",
    "str_subclass": "class E(str):\n    def __eq__(self, other):\n        return True\n",
}


@needs_bwrap
@pytest.mark.parametrize("fake", sorted(FAKES))
def test_objects_faking_equality_fail(box: Sandbox, fake: str, tmp_path: Path) -> None:
    make = "E()" if fake == "eq_object" else "E(0)" if fake == "int_subclass" else "E('x')"
    for returned in (make, f"[{make}][0]"):
        source = FAKES[fake] + f"def square(x):\n    return {returned}\n"
        for test in (SQUARE, {"program": "assert square(3) == 9\n"}):  # HumanEval and MBPP styles
            assert _naive_passes(source, test, tmp_path)
            score = _score(box, source, test)
            assert (score.reward, score.verdict) == (0.0, "wrong_answer"), (source, test)
            assert "not a plain built-in value" in score.details["first_failure"]["stderr"]
    nested = FAKES[fake] + f"def square(x):\n    return [{make}]\n"
    score = _score(box, nested, {"program": "assert square(3) == [9]\n"})
    assert score.verdict == "wrong_answer"


# ---------------------------------------------------------------- attacks: (c) patching the test's helpers

ABS_TEST = {"program": "def check(candidate):\n    assert abs(candidate(3) - 9) < 1e-9\n", "entry_point": "square"}
PATCHES: dict[str, tuple[str, dict[str, Any]]] = {
    "builtins.abs": ("import builtins\nbuiltins.abs = lambda v: 0\ndef square(x):\n    return 0\n", ABS_TEST),
    "builtins.isinstance": (
        "import builtins\nbuiltins.isinstance = lambda *a: True\ndef square(x):\n    return 'nine'\n",
        {"program": "def check(candidate):\n    assert isinstance(candidate(3), int)\n", "entry_point": "square"},
    ),
    "builtins.all": (
        "import builtins\nbuiltins.all = lambda it: True\ndef square(x):\n    return 0\n",
        {"program": "def check(candidate):\n    assert all(candidate(i) == i * i for i in range(1, 5))\n",
         "entry_point": "square"},
    ),
    "math.isclose": (
        "import math\nmath.isclose = lambda *a, **k: True\ndef volume_sphere(r):\n    return 0.0\n",
        mbpp_program(MBPP_ROWS[1]),
    ),
    "AssertionError": (
        "import builtins, os\nbuiltins.AssertionError = lambda *a: os._exit(0)\ndef square(x):\n    return 0\n",
        {"program": "def check(candidate):\n    if candidate(3) != 9:\n        raise AssertionError('wrong')\n",
         "entry_point": "square"},
    ),
    "sys.excepthook": (
        "import os, sys\nsys.excepthook = lambda *a: os._exit(0)\ndef square(x):\n    return 0\n", SQUARE,
    ),
    "shadowing abs": ("def abs(v):\n    return 0\ndef square(x):\n    return 0\n", ABS_TEST),
    "own check": ("def check(candidate):\n    pass\ndef square(x):\n    return 0\n", SQUARE),
    "patch during the call": (
        "def square(x):\n    import builtins\n    builtins.abs = lambda v: 0\n    return 0\n",
        {"program": "def check(candidate):\n    candidate(1)\n    assert abs(candidate(3) - 9) < 1e-9\n",
         "entry_point": "square"},
    ),
    "the test's globals via the caller's frame": (
        "import sys\ndef square(x):\n    sys._getframe(1).f_globals['abs'] = lambda v: 0\n    return 0\n",
        {"program": "def check(candidate):\n    candidate(1)\n    assert abs(candidate(3) - 9) < 1e-9\n",
         "entry_point": "square"},
    ),
}


@needs_bwrap
@pytest.mark.parametrize("patch", sorted(PATCHES))
def test_patching_what_the_test_uses_fails(box: Sandbox, patch: str, tmp_path: Path) -> None:
    source, test = PATCHES[patch]
    assert _naive_passes(source, test, tmp_path) is (patch != "own check")  # SRC redefines check
    score = _score(box, source, test)
    assert (score.reward, score.verdict) == (0.0, "wrong_answer"), score.details


@needs_bwrap
def test_stop_iteration_cannot_end_the_tests_loop(box: Sandbox, tmp_path: Path) -> None:
    test = {"program": "assert all(map(lambda x: square(x) == x * x, range(1, 5)))\n"}
    source = "def square(x):\n    raise StopIteration\n"  # ends map early: all() of nothing is True
    assert _naive_passes(source, test, tmp_path)
    score = _score(box, source, test)
    assert (score.reward, score.verdict) == (0.0, "runtime_error")
    assert "SubmissionError: StopIteration" in score.details["first_failure"]["stderr"]


# ---------------------------------------------------------------- attacks: (d) forging the completion line

FORGE = r'''
import gc, os, re, sys
found, tried = set(), []

def grab(data):
    if isinstance(data, bytes):
        data = data.decode("latin-1")
    found.update(re.findall(r"[0-9a-f]{32}|CANARY-[0-9]+", data))

def attempt(label, read):
    try:
        grab(read())
        tried.append(label + ":ok")
    except Exception as e:
        tried.append(f"{label}:{type(e).__name__}")

def memory(pid):
    out = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb") as mem:
        for line in maps:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            try:
                mem.seek(lo)
                out.append(mem.read(hi - lo))
            except (OSError, ValueError, OverflowError):
                pass
    return b"".join(out)

for name in os.listdir("."):
    attempt("file " + name, lambda: open(name, "rb").read())
attempt("stdin", lambda: os.read(0, 1 << 20))
attempt("environ", lambda: repr(dict(os.environ)))
for pid in sorted(p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()):
    for part in ("cmdline", "environ", "fd/0"):
        attempt(f"{pid}/{part}", lambda: open(f"/proc/{pid}/{part}", "rb").read())
    attempt(f"{pid}/mem", lambda: memory(pid))
grab(repr([vars(m) for m in list(sys.modules.values())]))
for obj in gc.get_objects():
    if isinstance(obj, (dict, list, tuple)):
        grab(repr(obj)[:100000])
frame = sys._getframe()
while frame is not None:
    grab(repr(frame.f_locals))
    frame = frame.f_back
print("TRIED", sorted(tried), file=sys.stderr)
print("FOUND", sorted(found), file=sys.stderr, flush=True)
for token in found:  # every candidate for the completion line, on every stdout there is
    print("\n" + token + "\n", flush=True)
    os.write(1, f"\n{token}\n".encode())
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/fd/1", "w") as out:
                out.write(f"\n{token}\n")
        except OSError:
            pass
os._exit(0)
'''


@needs_bwrap
@pytest.mark.parametrize("mode", ["zygote", "per_run"])
@pytest.mark.parametrize("when", ["at import", "during the call"])
def test_completion_line_cannot_be_learned_or_forged(mode: str, when: str, monkeypatch: pytest.MonkeyPatch) -> None:
    nonce = "0123456789abcdef" * 2
    monkeypatch.setattr(code.secrets, "token_hex", lambda n: nonce)
    planted = "fedcba9876543210" * 2  # a token the attack can find: its own source
    source = f"# {planted}\n" + (FORGE + "def square(x):\n    return 0\n" if when == "at import" else
                                 "def square(x):\n" + "".join(f"    {line}\n" for line in FORGE.splitlines()))
    test = {"program": "# CANARY-4242: the test program itself is secret too\n" + SQUARE_TEST, "entry_point": "square"}
    box = Sandbox(mode=mode)
    outcome = run_program_test(Program("python", source, {}, ()), test, box, FAST)
    assert outcome.verdict == "WA"
    found = re.search(r"FOUND (\[.*\])", outcome.stderr)
    tried = re.search(r"TRIED (\[.*\])", outcome.stderr)
    assert found and tried, outcome.stderr
    tokens = ast.literal_eval(found.group(1))
    assert planted in tokens  # the scan works: it finds its own token ...
    assert nonce not in tokens and "CANARY-4242" not in tokens  # ... never the nonce or the test program
    attempts = ast.literal_eval(tried.group(1))
    assert "file solution.py:ok" in attempts and "stdin:ok" in attempts  # the attack really ran
    assert not any(a.endswith("/mem:ok") for a in attempts if a.startswith("2/"))  # the test process: T
    score = verify_code(_fence(source), Problem("p", "", "code", tests=(test,)), sandbox=box, limits=FAST)
    assert (score.reward, score.verdict) == (0.0, "wrong_answer")


@needs_bwrap
def test_forge_attack_would_read_a_stdin_left_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: the per-run sandbox's init (bwrap) holds the run's stdin open, so a harness that did
    not empty it after reading would hand the test program to the attack above."""
    harness = code.program_harness_source()
    assert "os.ftruncate(0, 0)" in harness
    monkeypatch.setattr(code, "program_harness_source", lambda: harness.replace("os.ftruncate(0, 0)", "pass"))
    test = {"program": "# CANARY-4242\n" + SQUARE_TEST, "entry_point": "square"}
    source = FORGE + "def square(x):\n    return 0\n"
    outcome = run_program_test(Program("python", source, {}, ()), test, Sandbox(mode="per_run"), FAST)
    found = re.search(r"FOUND (\[.*\])", outcome.stderr)
    assert found and "CANARY-4242" in ast.literal_eval(found.group(1))
    assert outcome.verdict == "WA"  # it still cannot write the completion line: no stdout to write to
