"""Code verifier: run the response's last fenced program on the problem's tests in the sandbox.

Tests (`problem.tests`) come in three forms:
  {"input": str, "output": str}      stdin/stdout; outputs compared after stripping trailing
                                     whitespace on every line and trailing blank lines.
  {"call": "solve(1, 2)", "expected": "3"}  Python only: the sandboxed harness runs the program,
                                     evaluates the call and prints repr() of the result; the
                                     parent parses it with ast.literal_eval and compares it with
                                     the expected literal. The comparison happens outside the
                                     sandbox on plain values, so no object can fake equality.
  {"program": SRC, "entry_point": "f"}  Python only, HumanEval/MBPP style: the test program SRC
                                     runs after the submission (then check(f) when entry_point is
                                     given); it passes iff it completes. One sandboxed run, the
                                     test and the submission in two processes (run_program_test,
                                     sandbox/program_harness.py, docs/rewards.md).
A row may mix the forms; call and program tests need a Python submission.

Reward 1.0 iff every test passes (`mode="all"`, the report's rule), or the passed fraction
(`mode="fraction"`). Per-test verdicts: AC WA TLE MLE RE OLE. Overall verdicts: accepted,
wrong_answer, time_limit_exceeded, memory_limit_exceeded, runtime_error, output_limit_exceeded
(the first failing test's), no_code, no_tests, bad_test, compile_error, unsupported_language.

>>> from openk1.types import Problem
>>> p = Problem("Add.", "", "code", tests=({"input": "1 2", "output": "3"},))
>>> verify_code("```python\\na, b = map(int, input().split())\\nprint(a + b)\\n```", p).reward
1.0
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import keyword
import math
import re
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from openk1.rewards.base import Score, Verifier
from openk1.sandbox import OK, ExecResult, Limits, Sandbox, program_harness
from openk1.types import Problem

FENCE_RE = re.compile(r"```[ \t]*([^\n`]*)\n(.*?)```", re.DOTALL)
LANGUAGES: dict[str, str] = {
    "": "python",
    "python": "python",
    "python3": "python",
    "py": "python",
    "cpp": "cpp",
    "c++": "cpp",
    "cc": "cpp",
    "cxx": "cpp",
}
VERDICT_NAMES: dict[str, str] = {
    "AC": "accepted",
    "WA": "wrong_answer",
    "TLE": "time_limit_exceeded",
    "MLE": "memory_limit_exceeded",
    "RE": "runtime_error",
    "OLE": "output_limit_exceeded",
}
RUN_LIMITS = Limits(wall_s=4.0, cpu_s=2.0, memory_mb=512)
COMPILE_LIMITS = Limits(
    wall_s=30.0,
    cpu_s=20.0,
    memory_mb=2048,
    processes=16,
    file_size_mb=64,
    tmpfs_mb=256,
    output_bytes=64 << 20,
)
CPP_COMPILE = "g++ -std=c++17 -O2 -pipe -o main main.cpp 1>&2 && cat main"
FLOAT_TOL = 1e-6
SNIPPET = 300  # characters of stdout/stderr kept in details for the first failing test
PLAIN_SOURCE = inspect.getsource(program_harness.is_plain)  # the "plain value" rule of both harnesses

HARNESS = """import sys
sys.set_int_max_str_digits(0)
_nonce, _repr, _type, _write = {nonce!r}, repr, type, sys.stdout.write


{plain}

_ns = {{"__name__": "solution", "__builtins__": __builtins__}}
exec(compile(open("solution.py").read(), "solution.py", "exec"), _ns)
_result = eval(compile({call!r}, "<call>", "eval"), _ns)
_text = _repr(_result) if is_plain(_result) else "<unsupported " + _type(_result).__name__ + ">"
sys.stdout.flush()
_write("\\n" + _nonce + _text + "\\n")
sys.stdout.flush()
"""


@dataclass(frozen=True)
class Program:
    """A runnable program: the files to place in the sandbox and the command to run there."""

    language: str
    source: str
    files: Mapping[str, str | bytes]
    cmd: tuple[str, ...]
    executable: tuple[str, ...] = ()


@dataclass(frozen=True)
class CaseOutcome:
    verdict: str  # AC WA TLE MLE RE OLE
    wall_s: float
    got: str = ""
    stderr: str = ""
    expected: str = field(default="", repr=False)


def extract_program(response: str) -> tuple[str, str] | None:
    """(language, source) of the last fenced block tagged python/py/cpp/c++ or untagged."""
    for match in reversed(list(FENCE_RE.finditer(response))):
        tag = match.group(1).strip().split(" ")[0].lower() if match.group(1).strip() else ""
        if tag in LANGUAGES:
            return LANGUAGES[tag], match.group(2)
    return None


def normalize_output(text: str) -> str:
    """Strip trailing whitespace on every line, then trailing blank lines."""
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip("\n")


def prepare_program(
    source: str, language: str, sandbox: Sandbox
) -> tuple[Program | None, ExecResult | None]:
    """Python runs as is; C++ is compiled inside the sandbox. Returns (program, compile result);
    program is None when compilation failed."""
    if language == "python":
        files = {"main.py": source}
        return Program("python", source, files, tuple(sandbox.python_argv("main.py"))), None
    result = sandbox.run({"main.cpp": source}, ["sh", "-c", CPP_COMPILE], "", COMPILE_LIMITS)
    if not result.ok or not result.raw_stdout:
        return None, result
    return Program("cpp", source, {"main": result.raw_stdout}, ("./main",), ("main",)), result


def run_stdio_test(
    program: Program, test: Mapping[str, Any], sandbox: Sandbox, limits: Limits
) -> CaseOutcome:
    """Feed test["input"] on stdin; AC iff normalized stdout equals normalized test["output"]."""
    result = sandbox.run(program.files, program.cmd, str(test["input"]), limits, program.executable)
    expected = str(test["output"])
    if result.status != OK:
        return CaseOutcome(result.status, result.wall_s, result.stdout, result.stderr, expected)
    same = normalize_output(result.stdout) == normalize_output(expected)
    return CaseOutcome(
        "AC" if same else "WA", result.wall_s, result.stdout, result.stderr, expected
    )


def run_call_test(
    program: Program, test: Mapping[str, Any], sandbox: Sandbox, limits: Limits
) -> CaseOutcome:
    """Evaluate test["call"] after the program in the sandbox; compare here with test["expected"]."""
    nonce = secrets.token_hex(16)
    files = {
        "solution.py": program.source,
        "harness.py": HARNESS.format(nonce=nonce, call=str(test["call"]), plain=PLAIN_SOURCE),
    }
    result = sandbox.run(files, sandbox.python_argv("harness.py"), "", limits)
    expected = str(test["expected"])
    if result.status != OK:
        return CaseOutcome(result.status, result.wall_s, result.stdout, result.stderr, expected)
    marked = [line for line in result.stdout.splitlines() if line.startswith(nonce)]
    got = marked[-1][len(nonce) :] if marked else None
    verdict = "AC" if got is not None and results_match(got, expected) else "WA"
    return CaseOutcome(verdict, result.wall_s, got or "", result.stderr, expected)


PROGRAM_EXPECTED = "(the test program runs to completion)"


@functools.cache
def program_harness_source() -> str:
    """sandbox/program_harness.py's text: it runs in the sandbox as harness.py."""
    return inspect.getsource(program_harness)


def run_program_test(
    program: Program, test: Mapping[str, Any], sandbox: Sandbox, limits: Limits
) -> CaseOutcome:
    """Run test["program"] after the submission (then its check(entry point) when the test has
    "entry_point") in ONE sandboxed run; AC iff the harness printed this run's nonce, which
    reaches only the harness's test process, on stdin, after the submission's process forked."""
    nonce = secrets.token_hex(16)
    job = {"nonce": nonce, "program": str(test["program"]), "entry_point": test.get("entry_point")}
    files = {"solution.py": program.source, "harness.py": program_harness_source()}
    result = sandbox.run(files, sandbox.python_argv("harness.py"), json.dumps(job), limits)
    lines = result.stdout.splitlines()
    got = "\n".join(line for line in lines if line != nonce).strip()
    verdict = result.status if result.status != OK else "AC" if nonce in lines else "WA"
    return CaseOutcome(verdict, result.wall_s, got, result.stderr, PROGRAM_EXPECTED)


def _literal(text: str) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False, None


def results_match(got_repr: str, expected: str) -> bool:
    """Compare a result's repr with the expected text as plain literals (floats within
    FLOAT_TOL, lists and tuples alike); when `expected` is no literal, compare strings."""
    ok_got, got = _literal(got_repr)
    ok_exp, exp = _literal(expected)
    if ok_got and ok_exp:
        return values_equal(got, exp)
    if ok_got and isinstance(got, str) and got.strip() == expected.strip():
        return True
    return got_repr.strip() == expected.strip()


def values_equal(a: Any, b: Any) -> bool:
    """Structural equality of literal_eval values; only plain builtin types ever reach here."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=FLOAT_TOL, abs_tol=FLOAT_TOL)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def limits_for(problem: Problem, base: Limits) -> Limits:
    """`base`, with problem.extra["time_limit_s"] (CPU; wall becomes at least 2x+1 s) and
    problem.extra["memory_limit_mb"] applied when the problem gives them."""
    extra = problem.extra
    if "time_limit_s" in extra:
        cpu = float(extra["time_limit_s"])
        base = replace(base, cpu_s=cpu, wall_s=max(base.wall_s, 2 * cpu + 1))
    if "memory_limit_mb" in extra:
        base = replace(base, memory_mb=int(extra["memory_limit_mb"]))
    return base


# the two forms of a test (module docstring): (kind, field, field)
TEST_FORMS: tuple[tuple[str, str, str], ...] = (("stdio", "input", "output"),
                                                ("call", "call", "expected"))


def _program_problem(test: Mapping[str, Any]) -> str | None:
    """What is wrong with a test that has a "program" (None when nothing)."""
    program, entry = test.get("program"), test.get("entry_point")
    if not isinstance(program, str) or not program.strip():
        return f"'program' must be a non-empty string of Python, got {program!r:.40}"
    if entry is not None and not (
        isinstance(entry, str) and entry.isidentifier() and not keyword.iskeyword(entry)
    ):
        return f"'entry_point' must be a Python identifier, got {entry!r:.40}"
    return None


def classify_test(test: object) -> str | None:
    """"stdio", "call" or "program" for a well-formed test, else None. A null field counts as
    absent (a Parquet struct column holds the fields of every form); a non-null "program" makes
    it a program test."""
    if isinstance(test, Mapping):
        if test.get("program") is not None:
            return "program" if _program_problem(test) is None else None
        for kind, first, second in TEST_FORMS:
            if test.get(first) is not None and test.get(second) is not None:
                return kind
    return None


def bad_test_reason(test: object) -> str | None:
    """What makes `test` malformed (None when `classify_test` accepts it), e.g. "missing 'output'".
    The verifier scores such a test `bad_test`; the dataset loader (data/io.py) rejects its row."""
    if not isinstance(test, Mapping):
        return f"must be an object with input/output or call/expected, got {type(test).__name__}"
    if classify_test(test) is not None:
        return None
    if test.get("program") is not None:
        return _program_problem(test)
    for _, *fields in TEST_FORMS:
        given = [name for name in fields if test.get(name) is not None]
        if given:
            missing = next(name for name in fields if name not in given)
            return f"missing {missing!r}"
    return "needs 'input' and 'output' (stdin/stdout) or 'call' and 'expected', or 'program'"


def _outcome_details(outcomes: list[CaseOutcome], total: int) -> dict[str, Any]:
    details: dict[str, Any] = {
        "verdicts": [o.verdict for o in outcomes],
        "passed": sum(o.verdict == "AC" for o in outcomes),
        "total": total,
        "wall_s": [round(o.wall_s, 4) for o in outcomes],
    }
    failed = [(i, o) for i, o in enumerate(outcomes) if o.verdict != "AC"]
    if failed:
        i, o = failed[0]
        details["first_failure"] = {
            "test": i,
            "verdict": o.verdict,
            "got": o.got[:SNIPPET],
            "expected": o.expected[:SNIPPET],
            "stderr": o.stderr[-SNIPPET:],
        }
    return details


def _check_inputs(problem: Problem, response: str) -> Score | tuple[str, str]:
    """A Score when nothing can run (no tests, a malformed test, no code, an unsupported
    language), else the (language, source) to run."""
    if not problem.tests:
        return Score(0.0, "no_tests", {})
    kinds = [classify_test(t) for t in problem.tests]
    if None in kinds:
        return Score(0.0, "bad_test", {"test": kinds.index(None)})
    extracted = extract_program(response)
    if extracted is None:
        return Score(0.0, "no_code", {})
    python_only = "call" in kinds or "program" in kinds
    if extracted[0] == "cpp" and (shutil.which("g++") is None or python_only):
        reason = "call and program tests need Python" if python_only else "g++ not found"
        return Score(0.0, "unsupported_language", {"language": "cpp", "reason": reason})
    return extracted


RUNNERS = {"stdio": run_stdio_test, "call": run_call_test, "program": run_program_test}


def _run_tests(
    program: Program, tests: Sequence[Mapping[str, Any]], box: Sandbox, limits: Limits, stop: bool
) -> list[CaseOutcome]:
    """Run tests in order; with `stop`, end at the first one that is not AC."""
    outcomes: list[CaseOutcome] = []
    for test in tests:
        runner = RUNNERS[classify_test(test) or "stdio"]
        outcomes.append(runner(program, test, box, limits))
        if stop and outcomes[-1].verdict != "AC":
            break
    return outcomes


def verify_code(
    response: str,
    problem: Problem,
    *,
    mode: Literal["all", "fraction"] = "all",
    limits: Limits = RUN_LIMITS,
    sandbox: Sandbox | None = None,
    stop_on_failure: bool | None = None,
) -> Score:
    """Score `response` on `problem.tests`. In mode "all" the first failing test stops the run
    (unless stop_on_failure=False); in "fraction" every test runs."""
    checked = _check_inputs(problem, response)
    if isinstance(checked, Score):
        return checked
    language, source = checked
    box = sandbox if sandbox is not None else Sandbox()
    program, compiled = prepare_program(source, language, box)
    if program is None:
        stderr = compiled.stderr[-2000:] if compiled is not None else ""
        return Score(0.0, "compile_error", {"language": language, "stderr": stderr})
    stop = mode == "all" if stop_on_failure is None else stop_on_failure
    outcomes = _run_tests(program, problem.tests, box, limits_for(problem, limits), stop)
    total = len(problem.tests)
    details = {"language": language, **_outcome_details(outcomes, total)}
    first_bad = next((o.verdict for o in outcomes if o.verdict != "AC"), "AC")
    passed = details["passed"]
    reward = passed / total if mode == "fraction" else float(passed == total)
    return Score(reward, VERDICT_NAMES[first_bad], details)


def make_code_verifier(
    mode: Literal["all", "fraction"] = "all",
    limits: Limits = RUN_LIMITS,
    sandbox: Sandbox | None = None,
) -> Verifier:
    """A `(response, problem) -> Score` verifier with these settings bound."""
    return functools.partial(verify_code, mode=mode, limits=limits, sandbox=sandbox)


verify_code_fraction: Verifier = functools.partial(verify_code, mode="fraction")
