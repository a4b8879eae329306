"""`openk1 eval`: held-out accuracy and mean response tokens with the training verifier.

Pass@1 as in the report: k samples per problem (sampled as in training); a problem's pass@1 is
its mean reward over its k samples (with 0/1 rewards: correct samples / k), and Pass@1 is the
mean over problems. Every problem has k samples, so Pass@1 equals `accuracy`, the mean reward
over all samples. mean_tokens = mean number of generated tokens per response; `stop` = the
fraction of responses per rollout stop reason.

Several benchmarks: `--data` (named by its file stem) and every file of `benchmarks` are
evaluated with the same settings; DIR/summary.json keeps `--data`'s numbers at the top level
and has one entry per benchmark under `benchmarks`; DIR/results.md is one Markdown table.
"""

from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from tqdm import tqdm

from openk1.config import Section, StageConfig
from openk1.data.io import load_problems, write_jsonl
from openk1.data.sources import DataSource
from openk1.distributed import runtime
from openk1.errors import OpenK1Error
from openk1.frame import StageRun
from openk1.models.forward import forward_path
from openk1.models.io import load_model
from openk1.report.run_dir import atomic_write_text, check_inputs_outside
from openk1.rewards.scoring import RewardConfig, score_many
from openk1.rollout.engine import requests_for
from openk1.rollout.hf import HFEngine, SamplingConfig
from openk1.types import Problem


class EvalSettings(Section):
    samples_per_prompt: int = Field(4, gt=0, description="k responses per problem (Pass@1 is their mean)")
    sampling: SamplingConfig = Field(SamplingConfig(max_new_tokens=512),
                                     description="how the k responses are sampled")
    max_problems: int = Field(0, ge=0, description="first N problems of the file (0 = all)")
    seed: int = Field(1234, description="seed of the evaluation's own random streams")
    score_workers: int = Field(0, ge=0, description="> 0: verifiers in that many processes")


class EvalConfig(StageConfig):
    eval: EvalSettings = Field(EvalSettings(), description="sampling and verification settings")
    rewards: RewardConfig = Field(RewardConfig(), description="the same reward terms as training")
    # e.g. --set "benchmarks=[aime.jsonl,math500=test.jsonl]" (a FILE row is named by its stem)
    benchmarks: list[str] = Field(
        default_factory=list,
        description='more problem files evaluated like --data, one row each: "FILE" or "NAME=FILE"')


STOP_REASONS = ("normal", "max_tokens", "repeat", "budget")   # rollout `stop_reason`s


def evaluate(model: Any, tokenizer: Any, problems: list[Problem], settings: EvalSettings,
             keep_samples: bool = False, rewards: RewardConfig | None = None) -> dict[str, Any]:
    """Sample, verify and summarise; the same verifiers as RL (`score_many`). Problems with images
    need a vision-language model with its processor on `tokenizer` (models/vlm.py)."""
    if settings.max_problems:
        problems = problems[:settings.max_problems]
    k = settings.samples_per_prompt
    engine = HFEngine(model, tokenizer, settings.sampling)
    with tqdm(total=len(problems) * k, desc="eval", unit="sample", dynamic_ncols=True,
              mininterval=1.0, leave=False) as bar:
        engine.progress = bar.update
        prompts = [p.prompt for p in problems]
        if any(p.images for p in problems):   # a VLM: the processor on the tokenizer expands <image>
            rollout = engine.sample(requests_for(tokenizer, prompts, k, settings.seed, [p.images for p in problems]))
        else:
            rollout = engine.generate(prompts, k, settings.seed)
        bar.set_postfix_str("verifying")
        repeated = [p for p in problems for _ in range(k)]
        scores = score_many(rollout.texts, repeated, settings.score_workers, rewards=rewards)
    r = torch.tensor([s.reward for s in scores], device="cpu")                       # [problems * k]
    result: dict[str, Any] = {
        "accuracy": float(r.mean()),
        "mean_tokens": float(rollout.lengths.float().mean()),
        "problems": len(problems),
        "samples": len(scores),
        "accuracy_by_difficulty": by_difficulty(repeated, r),
        "k": k,
        "pass_at_1": mean(pass_at_1(r, k)),
        "stop": stop_fractions(rollout.stop_reason),
    }
    if keep_samples:
        result["rows"] = [{"id": p.id, "prompt": p.prompt, "answer": p.answer, "response": t,
                           "reward": s.reward, "verdict": s.verdict, "tokens": int(n)}
                          for p, t, s, n in zip(repeated, rollout.texts, scores, rollout.lengths)]
    return result


def pass_at_1(rewards: torch.Tensor, k: int) -> list[float]:
    """Per problem: mean reward of its k samples (rewards [N*k], problem-major, as `generate`
    returns them); with 0/1 rewards the fraction of correct samples."""
    return rewards.float().view(-1, k).mean(dim=1).tolist() if rewards.numel() else []


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def stop_fractions(reasons: list[str]) -> dict[str, float]:
    """Fraction of responses per stop reason; the four known ones always, others as they come."""
    counts = Counter(reasons)
    n = max(len(reasons), 1)
    return {r: counts.get(r, 0) / n for r in (*STOP_REASONS, *sorted(set(counts) - set(STOP_REASONS)))}


def benchmark_files(cfg: EvalConfig) -> list[tuple[str, str | DataSource]]:
    """(name, source) of --data and of each `benchmarks` entry (a file); names must differ."""
    files: list[tuple[str, str | DataSource]] = [(Path(cfg.data.path).stem, cfg.data)]
    for entry in cfg.benchmarks:
        name, sep, path = entry.partition("=")
        if not sep or not name or "/" in name:
            name, path = Path(entry).stem, entry
        if not path:
            raise OpenK1Error(f"eval: benchmarks entry {entry!r} names no file")
        files.append((name, path))
    names = [n for n, _ in files]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise OpenK1Error(f"eval: benchmark name {twice[0]!r} given twice; name one with NAME=FILE")
    if cfg.overwrite and not cfg.resume:   # --overwrite deletes DIR first
        check_inputs_outside(Path(cfg.out), [("benchmark", str(path)) for _, path in files[1:]])
    return files


def benchmark_entry(result: dict[str, Any]) -> dict[str, Any]:
    """One benchmark's numbers for summary.json."""
    keys = ("problems", "k", "pass_at_1", "mean_tokens", "stop", "accuracy_by_difficulty")
    return {key: result[key] for key in keys}


def results_table(benchmarks: dict[str, dict[str, Any]]) -> str:
    """DIR/results.md: one row per benchmark."""
    lines = ["| benchmark | problems | k | Pass@1 | mean tokens | stop: normal / max_tokens / repeat |",
             "|---|---:|---:|---:|---:|---|"]
    for name, b in benchmarks.items():
        stop = " / ".join(f"{b['stop'][r]:.3f}" for r in ("normal", "max_tokens", "repeat"))
        lines.append(f"| {name} | {b['problems']} | {b['k']} | {b['pass_at_1']:.4f} "
                     f"| {b['mean_tokens']:.1f} | {stop} |")
    return "\n".join(lines) + "\n"


def by_difficulty(problems: list[Problem], rewards: torch.Tensor) -> dict[str, float]:
    """Mean reward [N] per problem difficulty (eval's held-out split and RL's train metrics)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for p, r in zip(problems, rewards.tolist()):
        groups[str(p.difficulty)].append(r)
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


def run(cfg: EvalConfig) -> dict[str, Any]:
    """DIR/config.yaml, DIR/samples.jsonl (every sample of every benchmark, its reward and
    verdict), one row of DIR/metrics.jsonl and TensorBoard scalars (step 0), DIR/summary.json
    (--data's numbers at the top level, every benchmark under `benchmarks`), DIR/results.md."""
    with StageRun(cfg) as frame:
        files = benchmark_files(cfg)
        loaded = [(name, load_problems(path)) for name, path in files]   # all validate first
        model, tokenizer = load_model(cfg.model, prompts=cfg, device=runtime.resolve_device(cfg.device))
        frame.begin()
        frame.note_forward("eval", forward_path(model, cfg.eval.sampling.lean))
        rows: list[dict[str, Any]] = []
        metrics: dict[str, Any] = {}
        benchmarks: dict[str, dict[str, Any]] = {}
        result: dict[str, Any] = {}
        for i, (name, problems) in enumerate(loaded):
            got = evaluate(model, tokenizer, problems, cfg.eval, keep_samples=True, rewards=cfg.rewards)
            rows += [{"benchmark": name, **row} for row in got.pop("rows")]
            benchmarks[name] = benchmark_entry(got)
            metrics.update({f"eval/{name}/{key}": v for key, v in got.items() if key in
                            ("pass_at_1", "mean_tokens", "problems")})
            metrics.update({f"eval/{name}/stop/{r}": v for r, v in got["stop"].items()})
            if i == 0:
                result = got
        result["wall_seconds"] = time.perf_counter() - frame.started
        result["benchmarks"] = benchmarks
        write_jsonl(frame.path / "samples.jsonl", rows)
        frame.dir.log(0, {**{f"eval/{k}": v for k, v in result.items() if isinstance(v, (int, float))},
                          **metrics})
        table = results_table(benchmarks)
        atomic_write_text(frame.path / "results.md", table)
        print(table, file=sys.stderr, end="")
        return frame.finish(result)
