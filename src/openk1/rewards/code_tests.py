"""Test-case generation for code problems, the k1.5 recipe (report §2.3.5).

For a problem with reference `solutions` and an input generator (Python source printing one
test input; it may `import cyaron`):
  1. run the generator with seeds 0..num_inputs-1 in the sandbox (the launcher seeds `random`
     and passes the seed as argv[1]); failed runs and duplicate inputs are dropped;
  2. run up to `max_solutions` reference solutions on every input;
  3. an input becomes a test when at least `min_agree` of the solutions print the same
     (normalized) output, which becomes the expected output;
  4. the problem is kept when at least `min_passing` solutions pass every test.
Defaults are the report's: 50 inputs, 10 solutions, 7 of 10 agree, 9 of 10 pass
(1,000 problems -> 323 kept). Departure: with n < max_solutions references the two thresholds
scale to ceil(min_agree * n / max_solutions) and ceil(min_passing * n / max_solutions).

Also from the report (§2.3.5): a problem needs at least `min_tests` (40) valid tests, else it is
dropped (`too_few_tests`; a run of fewer than `min_tests` inputs needs every input to be a valid
test: min(min_tests, num_inputs)); problems that need a special judge (`special_judge: true` or
a non-empty `checker`) are excluded before anything runs; the `max_solutions` references are
drawn at random (`choose_solutions`, seeded by (seed, row)) when a problem has more.

Model-written generators: for a row without a generator, a model (any `Writer`) is asked
`generator_attempts` times with GENERATOR_PROMPT; the code of each answer (`extract_generator`)
is tried in order and the first that yields `min_tests` valid tests is used. That code runs in
the sandbox, like every generator.

Rows that already carry program tests ({"program": ...}, HumanEval/MBPP style: references are
functions, not stdin/stdout programs) are excluded before anything runs too, with reason
`program_tests`, and no model is asked for their generator.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from openk1.rewards.code import (
    FENCE_RE,
    RUN_LIMITS,
    Program,
    classify_test,
    normalize_output,
    prepare_program,
)
from openk1.sandbox import Job, Limits, Sandbox, SandboxPool, module_paths, module_spec
from openk1.types import Problem

GENERATOR_LAUNCHER = """import random, runpy, sys
seed = int(sys.argv[1])
random.seed(seed)
sys.argv = ["gen.py", str(seed)]
runpy.run_path("gen.py", run_name="__main__")
"""
GENERATOR_MODULES: tuple[str, ...] = ("cyaron", "colorful", "xeger")
CPP_HINT = re.compile(r"^\s*#\s*include\b", re.MULTILINE)
PYTHON_TAGS = ("python", "python3", "py")

# What a model is asked for a row without a generator ({problem}: the row's `prompt`); the
# stage wraps it in the tokenizer's chat template when there is one.
GENERATOR_PROMPT = """Write a Python program that prints ONE random test input for the \
programming problem below. You may use the CYaRon library (`import cyaron`) or `random`; the \
random seed is already set. Read nothing from stdin. Print only the input, in exactly the \
format and within the limits the problem states; vary the sizes, up to the limits.

Example problem: Given n (1 <= n <= 1000) and n integers a_i (|a_i| <= 10^9), print their sum. \
The first line holds n, the second the n integers.
Example generator:
```python
from cyaron import randint
n = randint(1, 1000)
print(n)
print(*[randint(-10**9, 10**9) for _ in range(n)])
```

Problem:
{problem}

Generator:
"""

# (requests, k) -> k answers per request, grouped: [k of requests[0], k of requests[1], ...]
Writer = Callable[[list[str], int], list[str]]


@dataclass(frozen=True)
class CodeTestsConfig:
    """Knobs of the recipe; defaults from the report."""

    num_inputs: int = 50
    max_solutions: int = 10
    min_agree: int = 7  # of max_solutions
    min_passing: int = 9  # of max_solutions
    min_tests: int = 40  # valid tests a problem needs (capped at num_inputs)
    seed: int = 0  # which references are drawn when a problem has more than max_solutions
    generator_attempts: int = 4  # model-written generators per problem without one
    workers: int = 2
    run_limits: Limits = RUN_LIMITS
    generator_limits: Limits = field(
        default_factory=lambda: Limits(wall_s=10.0, cpu_s=5.0, memory_mb=1024)
    )
    generator_modules: tuple[str, ...] = GENERATOR_MODULES


def scaled_threshold(threshold: int, n: int, of: int) -> int:
    """ceil(threshold * n / of): 7 of 10 stays 7; with 5 solutions it is 4."""
    return math.ceil(threshold * n / of) if n < of else threshold


def choose_solutions(n: int, k: int, seed: int, row: int) -> list[int]:
    """Indices of the references to run: all n when n <= k; else k of them drawn uniformly
    without replacement by random.Random(f"{seed}/{row}") (row: 0-based index in the file),
    in increasing order. The same (seed, row) always draws the same ones.

    >>> choose_solutions(3, 10, seed=0, row=5)
    [0, 1, 2]
    >>> choose_solutions(5, 2, seed=0, row=0) == sorted(random.Random("0/0").sample(range(5), 2))
    True
    """
    if n <= k:
        return list(range(n))
    return sorted(random.Random(f"{seed}/{row}").sample(range(n), k))


def needs_special_judge(row: Mapping[str, Any]) -> bool:
    """`special_judge: true` or a non-empty `checker`: answers cannot be compared as text."""
    return row.get("special_judge") is True or bool(str(row.get("checker") or "").strip())


def extract_generator(text: str) -> str:
    """The code of a model's answer: its first ```python (or py/python3) fence, else its first
    untagged fence, else the whole text.

    >>> extract_generator("Here:\\n```python\\nprint(1)\\n```\\nDone.")
    'print(1)\\n'
    >>> extract_generator("print(2)")
    'print(2)'
    """
    fences = [(m.group(1).strip().split(" ")[0].lower(), m.group(2))
              for m in FENCE_RE.finditer(text)]
    for wanted in (PYTHON_TAGS, ("",)):
        for tag, code in fences:
            if tag in wanted:
                return code
    return text


def guess_language(source: str) -> str:
    return "cpp" if CPP_HINT.search(source) else "python"


def generator_sandbox(modules: Sequence[str]) -> Sandbox:
    """A sandbox whose Python can import the importable ones among `modules` (read-only)."""
    present = [m for m in modules if module_spec(m) is not None]
    return Sandbox(python_modules=module_paths(present))


def generate_inputs(
    generator: str, cfg: CodeTestsConfig, pool: SandboxPool
) -> tuple[list[str], dict[str, int]]:
    """Run the generator once per seed; returns (unique inputs in seed order, counts)."""
    files = {"gen.py": generator, "launch.py": GENERATOR_LAUNCHER}
    jobs = [
        Job(files, pool.sandbox.python_argv("launch.py", str(seed)), "", cfg.generator_limits)
        for seed in range(cfg.num_inputs)
    ]
    outputs = [r.stdout for r in pool.map(jobs) if r.ok]
    unique = list(dict.fromkeys(outputs))
    counts = {
        "inputs_generated": len(outputs),
        "generator_failures": cfg.num_inputs - len(outputs),
        "unique_inputs": len(unique),
    }
    return unique, counts


def run_solutions(
    programs: Sequence[Program | None],
    inputs: Sequence[str],
    cfg: CodeTestsConfig,
    pool: SandboxPool,
) -> list[list[str | None]]:
    """outputs[s][i]: normalized stdout of solution s on input i; None when it did not run OK."""
    jobs = [
        Job(p.files, p.cmd, text, cfg.run_limits, p.executable)
        for p in programs
        if p is not None
        for text in inputs
    ]
    results = iter(pool.map(jobs))
    outputs: list[list[str | None]] = []
    for program in programs:
        row = [next(results) for _ in inputs] if program is not None else [None] * len(inputs)
        outputs.append(
            [normalize_output(r.stdout) if r is not None and r.ok else None for r in row]
        )
    return outputs


def majority_outputs(outputs: Sequence[Sequence[str | None]], min_agree: int) -> list[str | None]:
    """Per input: the output printed by at least `min_agree` solutions, else None."""
    expected: list[str | None] = []
    for column in zip(*outputs):
        votes = Counter(out for out in column if out is not None).most_common(1)
        expected.append(votes[0][0] if votes and votes[0][1] >= min_agree else None)
    return expected


def passing_solutions(
    outputs: Sequence[Sequence[str | None]], expected: Sequence[str | None]
) -> list[bool]:
    """Whether each solution matches every valid (not None) expected output."""
    valid = [i for i, e in enumerate(expected) if e is not None]
    return [all(row[i] == expected[i] for i in valid) for row in outputs]


def _decide(counts: dict[str, Any], min_tests: int = 1) -> str:
    """The first failed check, else "kept"; too_few_tests is 1 .. min_tests-1 valid tests (none
    at all is the more telling no_inputs or no_valid_tests)."""
    if counts["solutions"] == 0:
        return "no_solutions"
    if counts["unique_inputs"] == 0:
        return "no_inputs"
    if counts["valid_tests"] == 0:
        return "no_valid_tests"
    if counts["valid_tests"] < min_tests:
        return "too_few_tests"
    if counts["solutions_passing"] < counts["min_passing"]:
        return "too_few_passing"
    return "kept"


def _try_generator(
    generator: str, programs: Sequence[Program | None], cfg: CodeTestsConfig, pool: SandboxPool
) -> tuple[tuple[dict[str, str], ...], dict[str, Any]]:
    """(valid tests, counts) of one generator against the prepared references."""
    n = len(programs)
    min_agree = scaled_threshold(cfg.min_agree, n, cfg.max_solutions)
    runs = bool(n and generator.strip())
    inputs, counts = generate_inputs(generator, cfg, pool) if runs else ([], _no_input_counts(cfg))
    outputs = run_solutions(programs, inputs, cfg, pool) if inputs else [[] for _ in programs]
    expected = majority_outputs(outputs, min_agree) if inputs else []
    passing = passing_solutions(outputs, expected)
    tests = tuple({"input": i, "output": e} for i, e in zip(inputs, expected) if e is not None)
    return tests, {**counts, "valid_tests": len(tests), "solutions_passing": sum(passing)}


def generate_tests(
    problem: Problem,
    generator: str | Sequence[str],
    cfg: CodeTestsConfig = CodeTestsConfig(),
    pool: SandboxPool | None = None,
    row: int = 0,
) -> tuple[Problem, dict[str, Any]]:
    """The problem with `tests` = the valid generated cases, and a report of the counts;
    report["kept"] says whether the problem passes the recipe's filter.

    `generator`: one source, or candidates tried in order until one yields min_tests valid
    tests (report["attempt"], 1-based; None when none did: the counts are then those of the
    candidate with the most valid tests, and report["attempts"] gives each one's reason)."""
    candidates = [generator] if isinstance(generator, str) else list(generator) or [""]
    own_pool = pool is None
    if pool is None:
        pool = SandboxPool(cfg.workers, generator_sandbox(cfg.generator_modules))
    indices = choose_solutions(len(problem.solutions), cfg.max_solutions, cfg.seed, row)
    n = len(indices)
    base: dict[str, Any] = {
        "id": problem.id,
        "solutions": n,
        "solution_indices": indices,
        "min_agree": scaled_threshold(cfg.min_agree, n, cfg.max_solutions),
        "min_passing": scaled_threshold(cfg.min_passing, n, cfg.max_solutions),
        "min_tests": min(cfg.min_tests, cfg.num_inputs),
    }
    try:
        sources = [problem.solutions[i] for i in indices]
        programs = [prepare_program(src, guess_language(src), pool.sandbox)[0] for src in sources]
        base["compile_failures"] = programs.count(None)
        tried = _try_candidates(candidates, programs, base, cfg, pool)
    finally:
        if own_pool:
            pool.close()
    return replace(problem, tests=tried[0]), tried[1]


def _try_candidates(
    candidates: Sequence[str],
    programs: Sequence[Program | None],
    base: dict[str, Any],
    cfg: CodeTestsConfig,
    pool: SandboxPool,
) -> tuple[tuple[dict[str, str], ...], dict[str, Any]]:
    """(tests, report) of the first candidate with min_tests valid tests, else of the best."""
    attempts: list[dict[str, Any]] = []
    results: list[tuple[int, tuple[dict[str, str], ...], dict[str, Any]]] = []
    for number, source in enumerate(candidates, start=1):
        if source in candidates[: number - 1]:  # e.g. greedy sampling: the same code again
            attempts.append({"attempt": number, "reason": "duplicate"})
            continue
        tests, counts = _try_generator(source, programs, cfg, pool)
        report = {**base, **counts}
        report["reason"] = _decide(report, base["min_tests"])
        attempts.append({"attempt": number, "reason": report["reason"],
                         "unique_inputs": counts["unique_inputs"],
                         "valid_tests": counts["valid_tests"]})
        results.append((number, tests, report))
        if counts["valid_tests"] >= base["min_tests"]:
            break
    number, tests, report = max(results, key=lambda r: r[2]["valid_tests"])  # first of the best
    enough = report["valid_tests"] >= base["min_tests"]
    report.update(attempt=number if enough else None, attempts=attempts,
                  kept=report["reason"] == "kept")
    return tests, report


def _no_input_counts(cfg: CodeTestsConfig) -> dict[str, int]:
    return {"inputs_generated": 0, "generator_failures": 0, "unique_inputs": 0}


def row_to_problem(row: Mapping[str, Any]) -> Problem:
    """A code dataset row (prompt, solutions, generator, ...) as a Problem."""
    return Problem(
        prompt=str(row["prompt"]),
        answer=str(row.get("answer", "")),
        type="code",
        id=str(row.get("id", "")),
        solutions=tuple(str(s) for s in row.get("solutions", ())),
    )


def row_generator(row: Mapping[str, Any]) -> str:
    """The row's own generator; "" when it has none (a model may write one)."""
    return str(row.get("generator") or "")


def has_program_tests(row: Mapping[str, Any]) -> bool:
    """The row already has program tests (HumanEval/MBPP style), which this stdin/stdout recipe
    does not make or check: it is excluded (`program_tests`)."""
    tests = row.get("tests") or ()
    return isinstance(tests, (list, tuple)) and any(classify_test(t) == "program" for t in tests)


def needs_writer(row: Mapping[str, Any]) -> bool:
    """A row a model must write a generator for: none of its own, references to run, and no
    special judge or program tests (excluded anyway)."""
    return not row_generator(row).strip() and bool(row.get("solutions")) \
        and not needs_special_judge(row) and not has_program_tests(row)


def write_generators(
    rows: Sequence[Mapping[str, Any]], cfg: CodeTestsConfig, writer: Writer | None
) -> dict[int, list[str]]:
    """Row index -> the candidate generators a model wrote for it (rows that need one), each
    the code `extract_generator` finds in one answer to GENERATOR_PROMPT."""
    wanted = [i for i, row in enumerate(rows) if needs_writer(row)]
    if not wanted:
        return {}
    if writer is None:
        raise ValueError(f"row {wanted[0] + 1}: no 'generator' and no model to write one")
    k = cfg.generator_attempts
    answers = writer([GENERATOR_PROMPT.format(problem=rows[i]["prompt"]) for i in wanted], k)
    if len(answers) != len(wanted) * k:
        raise ValueError(f"writer returned {len(answers)} answers for {len(wanted)} x {k}")
    return {i: [extract_generator(a) for a in answers[j * k:(j + 1) * k]]
            for j, i in enumerate(wanted)}


def excluded_report(problem: Problem, reason: str) -> dict[str, Any]:
    """The report of a problem excluded before any run (e.g. `special_judge`)."""
    return {"id": problem.id, "solutions": 0, "solution_indices": [], "inputs_generated": 0,
            "unique_inputs": 0, "valid_tests": 0, "solutions_passing": 0, "attempt": None,
            "attempts": [], "reason": reason, "kept": False}


def generate_tests_for_problems(
    rows: Sequence[Mapping[str, Any]],
    cfg: CodeTestsConfig = CodeTestsConfig(),
    writer: Writer | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the recipe on every row (fields: prompt, solutions, generator, type="code",
    special_judge / checker). Rows without a generator get `writer`'s (a model's) candidates;
    the one used is saved in the kept row's `generator`. Returns (kept rows with `tests`
    filled in, report with totals and per-problem counts)."""
    written = write_generators(rows, cfg, writer)
    kept: list[dict[str, Any]] = []
    per_problem: list[dict[str, Any]] = []
    with SandboxPool(cfg.workers, generator_sandbox(cfg.generator_modules)) as pool:
        for index, row in enumerate(rows):
            problem = row_to_problem(row)
            excluded = "special_judge" if needs_special_judge(row) else \
                "program_tests" if has_program_tests(row) else None
            if excluded:
                per_problem.append({"row": index, **excluded_report(problem, excluded),
                                    "generator_source": None})
                continue
            candidates = written.get(index) or [row_generator(row)]
            problem, report = generate_tests(problem, candidates, cfg, pool, row=index)
            source = "model" if index in written else "row"
            per_problem.append({"row": index, **report, "generator_source": source})
            if report["kept"]:
                generator = candidates[report["attempt"] - 1]
                tests = [dict(t) for t in problem.tests]
                kept.append({**row, "generator": generator, "tests": tests})
    reasons = Counter(r["reason"] for r in per_problem)
    summary = {
        "problems": len(rows),
        "kept": len(kept),
        "reasons": dict(reasons),
        "per_problem": per_problem,
    }
    return kept, summary
