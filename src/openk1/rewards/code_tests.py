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
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from openk1.rewards.code import RUN_LIMITS, Program, normalize_output, prepare_program
from openk1.rewards.sandbox import Job, Limits, Sandbox, SandboxPool, module_paths, module_spec
from openk1.types import Problem

GENERATOR_LAUNCHER = """import random, runpy, sys
seed = int(sys.argv[1])
random.seed(seed)
sys.argv = ["gen.py", str(seed)]
runpy.run_path("gen.py", run_name="__main__")
"""
GENERATOR_MODULES: tuple[str, ...] = ("cyaron", "colorful", "xeger")
CPP_HINT = re.compile(r"^\s*#\s*include\b", re.MULTILINE)


@dataclass(frozen=True)
class CodeTestsConfig:
    """Knobs of the recipe; defaults from the report."""

    num_inputs: int = 50
    max_solutions: int = 10
    min_agree: int = 7  # of max_solutions
    min_passing: int = 9  # of max_solutions
    workers: int = 2
    run_limits: Limits = RUN_LIMITS
    generator_limits: Limits = field(
        default_factory=lambda: Limits(wall_s=10.0, cpu_s=5.0, memory_mb=1024)
    )
    generator_modules: tuple[str, ...] = GENERATOR_MODULES


def scaled_threshold(threshold: int, n: int, of: int) -> int:
    """ceil(threshold * n / of): 7 of 10 stays 7; with 5 solutions it is 4."""
    return math.ceil(threshold * n / of) if n < of else threshold


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


def _decide(counts: dict[str, Any]) -> str:
    if counts["solutions"] == 0:
        return "no_solutions"
    if counts["unique_inputs"] == 0:
        return "no_inputs"
    if counts["valid_tests"] == 0:
        return "no_valid_tests"
    if counts["solutions_passing"] < counts["min_passing"]:
        return "too_few_passing"
    return "kept"


def generate_tests(
    problem: Problem,
    generator: str,
    cfg: CodeTestsConfig = CodeTestsConfig(),
    pool: SandboxPool | None = None,
) -> tuple[Problem, dict[str, Any]]:
    """The problem with `tests` = the valid generated cases, and a report of the counts;
    report["kept"] says whether the problem passes the recipe's filter."""
    own_pool = pool is None
    pool = (
        pool
        if pool is not None
        else SandboxPool(cfg.workers, generator_sandbox(cfg.generator_modules))
    )
    try:
        sources = list(problem.solutions[: cfg.max_solutions])
        n = len(sources)
        min_agree = scaled_threshold(cfg.min_agree, n, cfg.max_solutions)
        min_passing = scaled_threshold(cfg.min_passing, n, cfg.max_solutions)
        has_gen = bool(n and generator.strip())
        inputs, counts = (
            generate_inputs(generator, cfg, pool) if has_gen else ([], _no_input_counts(cfg))
        )
        programs = [prepare_program(src, guess_language(src), pool.sandbox)[0] for src in sources]
        outputs = run_solutions(programs, inputs, cfg, pool) if inputs else [[] for _ in sources]
        expected = majority_outputs(outputs, min_agree) if inputs else []
        passing = passing_solutions(outputs, expected)
    finally:
        if own_pool:
            pool.close()
    tests = tuple({"input": i, "output": e} for i, e in zip(inputs, expected) if e is not None)
    report: dict[str, Any] = {
        "id": problem.id,
        **counts,
        "solutions": n,
        "compile_failures": programs.count(None),
        "valid_tests": len(tests),
        "solutions_passing": sum(passing),
        "min_agree": min_agree,
        "min_passing": min_passing,
    }
    report["reason"] = _decide(report)
    report["kept"] = report["reason"] == "kept"
    return replace(problem, tests=tests), report


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


def generate_tests_for_problems(
    rows: Sequence[Mapping[str, Any]], cfg: CodeTestsConfig = CodeTestsConfig()
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the recipe on every row (fields: prompt, solutions, generator, type="code").
    Returns (kept rows with `tests` filled in, report with totals and per-problem counts)."""
    kept: list[dict[str, Any]] = []
    per_problem: list[dict[str, Any]] = []
    with SandboxPool(cfg.workers, generator_sandbox(cfg.generator_modules)) as pool:
        for index, row in enumerate(rows):
            problem, report = generate_tests(
                row_to_problem(row), str(row.get("generator", "")), cfg, pool
            )
            per_problem.append({"row": index, **report})
            if report["kept"]:
                kept.append({**row, "tests": [dict(t) for t in problem.tests]})
    reasons = Counter(r["reason"] for r in per_problem)
    summary = {
        "problems": len(rows),
        "kept": len(kept),
        "reasons": dict(reasons),
        "per_problem": per_problem,
    }
    return kept, summary
