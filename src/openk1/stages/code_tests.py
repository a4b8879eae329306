"""`openk1 code-tests`: make test cases for code problems with the k1.5 recipe (report §2.3.5).

Input rows: `prompt`, `solutions` (reference programs, Python or C++), `generator` (Python that
prints one test input; it may `import cyaron`), `type` ("code" if given), `special_judge` (bool)
or `checker` (str). For each problem (rewards/code_tests.py): run the generator `num_inputs`
times; run `max_solutions` references (drawn at random, seeded by (seed, row), when there are
more) on every input; an input whose output at least `min_agree` of them agree on becomes a
test; the problem is kept when it has at least `min_tests` tests and at least `min_passing`
references pass every test. Problems that need a special judge are excluded before any run.
Defaults are the report's: 50 inputs, 10 solutions, 7 agree, 9 pass, 40 tests (1,000 problems
-> 323 kept).

Rows without a generator: with `--model DIR` the model writes `generator_attempts` candidates
(GENERATOR_PROMPT, in the tokenizer's chat template when it has one; sampled with
`generator_sampling`), tried in order in the sandbox; the first with `min_tests` valid tests is
used and saved in the kept row's `generator` (the report, as in §2.3.5, has a model write CYaRon
generators). Without `--model` such a row is an error.

Writes DIR/problems.jsonl (the kept rows, every input field preserved, plus `tests` and the
`generator` used: a dataset `openk1 rl` reads), DIR/summary.json (counts, reasons, per-problem
report), DIR/metrics.jsonl (one row per problem) and DIR/config.yaml. Departures: with fewer
than `max_solutions` references the two thresholds scale down (ceil(7n/10), ceil(9n/10)); with
fewer than `min_tests` inputs every input must be a valid test.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from openk1.config import StageConfig
from openk1.data.io import read_located, write_jsonl
from openk1.distributed import runtime
from openk1.errors import OpenK1Error
from openk1.frame import StageRun
from openk1.rewards.code_tests import (
    CodeTestsConfig,
    Writer,
    generate_tests_for_problems,
    has_program_tests,
    needs_special_judge,
    row_generator,
)
from openk1.rollout.hf import SamplingConfig
from openk1.sandbox import Limits, SandboxUnavailable


class CodeTestsStageConfig(StageConfig):
    num_inputs: int = Field(50, gt=0, description="generator runs per problem (report: 50)")
    max_solutions: int = Field(10, gt=0, description="reference solutions run per problem (report: 10)")
    min_agree: int = Field(7, gt=0, description="of max_solutions, for an input to become a test (report: 7)")
    min_passing: int = Field(9, gt=0, description="of max_solutions, for a problem to be kept (report: 9)")
    min_tests: int = Field(40, gt=0, description="valid tests a kept problem has (report: >= 40 of 50 runs)")
    workers: int = Field(2, gt=0, description="sandboxed runs in parallel")
    run_cpu_s: float = Field(2.0, gt=0.0, description="CPU seconds per reference run; its wall limit is 2x + 1 s")
    run_memory_mb: int = Field(512, gt=0, description="memory limit of a reference run")
    generator_cpu_s: float = Field(5.0, gt=0.0, description="CPU seconds per generator run; its wall limit is 2x s")
    generator_memory_mb: int = Field(1024, gt=0, description="memory limit of a generator run")
    generator_attempts: int = Field(4, gt=0, description="--model: generators it writes per problem that has none")
    generator_sampling: SamplingConfig = Field(
        SamplingConfig.model_validate({"temperature": 1.0, "max_new_tokens": 1024}),
        description="--model: sampling of those attempts (T 1: they differ; room for code, not an essay)")

    @model_validator(mode="after")
    def _thresholds(self) -> CodeTestsStageConfig:
        for name in ("min_agree", "min_passing"):
            if getattr(self, name) > self.max_solutions:
                raise ValueError(f"{name} ({getattr(self, name)}) must be <= max_solutions "
                                 f"({self.max_solutions})")
        return self


def recipe(cfg: CodeTestsStageConfig) -> CodeTestsConfig:
    """The library's knobs from the stage config."""
    return CodeTestsConfig(
        num_inputs=cfg.num_inputs,
        max_solutions=cfg.max_solutions,
        min_agree=cfg.min_agree,
        min_passing=cfg.min_passing,
        min_tests=cfg.min_tests,
        seed=cfg.seed,
        generator_attempts=cfg.generator_attempts,
        workers=cfg.workers,
        run_limits=Limits(
            wall_s=2 * cfg.run_cpu_s + 1, cpu_s=cfg.run_cpu_s, memory_mb=cfg.run_memory_mb
        ),
        generator_limits=Limits(
            wall_s=2 * cfg.generator_cpu_s,
            cpu_s=cfg.generator_cpu_s,
            memory_mb=cfg.generator_memory_mb,
        ),
    )


def load_code_rows(path: str | Path, need_generator: bool = True) -> list[dict[str, Any]]:
    """Rows with prompt (str), solutions (list of str), generator (str; may be missing or empty
    when a model writes it: `need_generator` False, or when the row needs a special judge),
    special_judge (bool), checker (str), type "code" if given; a bad row is an error naming the
    file, the row (data/io.py `location`) and the field. Rows with program tests (HumanEval,
    MBPP) need no generator: they are kept out of generation (rewards/code_tests.py)."""
    located = read_located(path)
    for where, row in located:
        for name in ("prompt", "solutions"):
            if row.get(name) is None:
                raise OpenK1Error(f"{where}: missing field '{name}'")
        for name, kind in (("prompt", str), ("generator", str), ("special_judge", bool),
                           ("checker", str)):
            if row.get(name) is not None and not isinstance(row[name], kind):
                raise OpenK1Error(f"{where}: field '{name}' must be {kind.__name__}, "
                                  f"got {type(row[name]).__name__}")
        solutions = row["solutions"]
        if not isinstance(solutions, list) or not all(isinstance(s, str) for s in solutions):
            raise OpenK1Error(f"{where}: field 'solutions' must be a list of strings (programs)")
        if row.get("type", "code") != "code":
            raise OpenK1Error(f"{where}: field 'type' must be 'code', got {row['type']!r}")
        if (need_generator and not needs_special_judge(row) and not has_program_tests(row)
                and not row_generator(row).strip()):
            state = "missing field" if row.get("generator") is None else "empty field"
            raise OpenK1Error(f"{where}: {state} 'generator' (give --model DIR to have a model "
                              "write one)")
    return [row for _, row in located]


def model_writer(cfg: CodeTestsStageConfig) -> Writer:
    """The Writer over the model in cfg.model, loaded when first asked (never when every row has
    a generator): the rollout engine, as in `openk1 eval`; `k` samples per request, seeded by
    cfg.seed."""
    def write(requests: list[str], k: int) -> list[str]:
        from openk1.models.io import load_model
        from openk1.rollout.hf import HFEngine

        # the model's prompt format (models/prompting.py), on the run's device
        model, tokenizer = load_model(cfg.model, prompts=cfg, device=runtime.resolve_device(cfg.device))
        engine = HFEngine(model, tokenizer, cfg.generator_sampling)
        return engine.generate(requests, k, cfg.seed).texts

    return write


def run(cfg: CodeTestsStageConfig) -> dict[str, Any]:
    if not cfg.data or not cfg.out:
        raise OpenK1Error("code-tests: needs --data IN.jsonl --out DIR")
    with StageRun(cfg, tensorboard=False) as frame:
        rows = load_code_rows(cfg.data.plain_path("code-tests"), need_generator=not cfg.model)
        frame.begin()
        try:
            kept, report = generate_tests_for_problems(
                rows, recipe(cfg), model_writer(cfg) if cfg.model else None)
        except SandboxUnavailable as exc:
            raise OpenK1Error(f"code-tests: {exc}") from None
        per_problem = [{**r, "row": r["row"] + 1} for r in report["per_problem"]]  # 1-based rows
        for r in per_problem:
            frame.dir.log(r["row"], {k: v for k, v in r.items() if k != "row"})
        write_jsonl(frame.path / "problems.jsonl", kept)
        summary = frame.finish({
            "problems": report["problems"],
            "kept": report["kept"],
            "kept_fraction": report["kept"] / report["problems"],
            "reasons": report["reasons"],
            "generator_source": dict(Counter(str(r["generator_source"]) for r in per_problem)),
            "tests_total": sum(len(row["tests"]) for row in kept),
            "problems_file": str(frame.path / "problems.jsonl"),
            "per_problem": per_problem,
        })
        return {k: v for k, v in summary.items() if k != "per_problem"}  # printed by the CLI
