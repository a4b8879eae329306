"""`openk1 longcot [build|train|all]`: the long-CoT SFT warm-up (report §2.2).

build: for every prompt, sample n responses from a generator model with a prompt template that
asks for planning, evaluation, reflection and exploration; verify each with the training
verifiers (`score_many`); keep the verified ones (`keep`: shortest / longest / random correct,
or all); write the SFT dataset (`prompt` = the original prompt, `response` = the trace) and the
acceptance statistics per domain and difficulty (`longcot_stats.json`).
train: a light SFT on that dataset with the shared LM trainer (every `SFTConfig` field applies).
Departure: the report's generator is a large model prompted by hand; any HF model directory
works here, and the template is ours (`{prompt}` for the char-level demo model).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from openk1.config import Section
from openk1.data.io import load_problems, write_jsonl
from openk1.distributed import runtime
from openk1.errors import OpenK1Error
from openk1.frame import StageRun
from openk1.models.io import load_model
from openk1.report.run_dir import atomic_write_text, to_json
from openk1.rewards.scoring import score_many
from openk1.rollout.hf import HFEngine, SamplingConfig
from openk1.stages import sft
from openk1.types import Problem

TEMPLATE = ("Solve the problem below. First make a plan, then work step by step, check each "
            "intermediate result, reflect on and correct mistakes, and try another approach if "
            "one fails. End with the final answer in \\boxed{{}}.\n\n{prompt}")


class BuildSettings(Section):
    generator: str = Field("", description='model directory that writes the traces ("" = --model)')
    template: str = Field(TEMPLATE, description="prompt template; must contain {prompt}")
    samples_per_prompt: int = Field(8, gt=0, description="traces sampled per problem")
    keep: Literal["shortest", "longest", "random", "all"] = Field(
        "shortest", description="which verified traces of a problem become SFT rows")
    sampling: SamplingConfig = Field(SamplingConfig(temperature=1.0, max_new_tokens=1024),
                                     description="how the traces are sampled")
    max_prompts: int = Field(0, ge=0, description="first N problems of --data (0 = all)")
    score_workers: int = Field(0, ge=0, description="> 0: verifiers in that many processes")
    seed: int = Field(0, description="seed of the sampling")


class LongCoTConfig(sft.SFTConfig):
    action: Literal["build", "train", "all"] = Field("all", description="build the traces, train on them, or both")
    build: BuildSettings = Field(BuildSettings(), description="`build`: sampling and verifying the long-CoT traces")
    dataset: str = Field("", description="the SFT dataset (build writes it; default DIR/longcot.jsonl)")

    # `longcot train --out DIR` after `longcot build --out DIR` continues that run: its
    # config.yaml is the base, the training keys may be set, the build's may not change
    continuation_keeps = ("build", "data", "dataset", "seed")

    @classmethod
    def continues(cls, saved: dict[str, Any], given: dict[str, Any]) -> bool:
        return saved.get("action") == "build" and given.get("action") == "train"


def choose(correct: list[tuple[str, int]], keep: str, rng: random.Random) -> list[str]:
    """Verified responses (text, tokens) of one prompt -> the ones kept.

    >>> choose([("aaa", 3), ("a", 1), ("aa", 2)], "shortest", random.Random(0))
    ['a']
    """
    if not correct:
        return []
    if keep == "all":
        return [t for t, _ in correct]
    if keep == "random":
        return [rng.choice(correct)[0]]
    pick = min if keep == "shortest" else max
    return [pick(correct, key=lambda c: c[1])[0]]


def acceptance(problems: list[Problem], correct: list[int], k: int) -> dict[str, Any]:
    """Per domain and per difficulty: prompts, samples, correct samples, prompts kept, rates."""
    groups: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for p, c in zip(problems, correct):
        for key in ("all", f"domain/{p.domain or 'none'}", f"difficulty/{p.difficulty}"):
            g = groups[key]
            g["prompts"] += 1
            g["samples"] += k
            g["correct"] += c
            g["kept_prompts"] += c > 0
    return {key: {**g, "sample_acceptance": g["correct"] / g["samples"],
                  "prompt_acceptance": g["kept_prompts"] / g["prompts"]}
            for key, g in sorted(groups.items())}


def build(problems: list[Problem], model: Any, tokenizer: Any, settings: BuildSettings,
          ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Generate k traces per prompt, verify, keep: (SFT rows, acceptance statistics)."""
    if "{prompt}" not in settings.template:
        raise OpenK1Error("build.template must contain {prompt}")
    if settings.max_prompts:
        problems = problems[:settings.max_prompts]
    k = settings.samples_per_prompt
    prompts = [settings.template.replace("{prompt}", p.prompt) for p in problems]
    rollout = HFEngine(model, tokenizer, settings.sampling).generate(prompts, k, settings.seed)
    scores = score_many(rollout.texts, [p for p in problems for _ in range(k)], settings.score_workers)
    rng, rows, correct = random.Random(settings.seed), [], []
    for i, p in enumerate(problems):
        span = range(i * k, (i + 1) * k)
        ok = [(rollout.texts[j], int(rollout.lengths[j])) for j in span
              if scores[j].reward >= 1.0 and rollout.stop_reason[j] == "normal"]
        correct.append(len(ok))
        rows += [{"prompt": p.prompt, "response": text, "id": p.id, "domain": p.domain,
                  "difficulty": p.difficulty, "answer": p.answer} for text in choose(ok, settings.keep, rng)]
    return rows, acceptance(problems, correct, k)


def run_build(cfg: LongCoTConfig, frame: StageRun) -> dict[str, Any]:
    problems = load_problems(cfg.data)
    model, tokenizer = load_model(cfg.build.generator or cfg.model, prompts=cfg,
                                  device=runtime.resolve_device(cfg.device))
    frame.begin()   # the inputs are valid: the run starts writing
    rows, stats = build(problems, model, tokenizer, cfg.build)
    atomic_write_text(frame.path / "longcot_stats.json", to_json(stats, indent=2) + "\n")
    if not rows:
        raise OpenK1Error(f"{cfg.data.path}: no verified trace was kept (acceptance 0, see "
                          f"{frame.path / 'longcot_stats.json'}); check the generator, the "
                          "template or max_new_tokens")
    path = cfg.dataset or str(frame.path / "longcot.jsonl")
    write_jsonl(path, rows)
    return {"dataset": path, "rows": len(rows), "acceptance": stats["all"]["sample_acceptance"],
            "prompt_acceptance": stats["all"]["prompt_acceptance"]}


def run(cfg: LongCoTConfig) -> dict[str, Any]:
    """build, train, or both; train reads `dataset` (or DIR/longcot.jsonl) and trains in DIR/sft.

    `--resume` of `all` does not build again once the dataset is there."""
    with StageRun(cfg, tensorboard=False) as frame:
        dataset = cfg.dataset or str(frame.path / "longcot.jsonl")
        if cfg.action == "train" and cfg.overwrite and Path(dataset).resolve().is_relative_to(frame.path.resolve()):
            raise OpenK1Error(f"{frame.path}: --overwrite would delete the dataset {dataset}; "
                              "`longcot train --out DIR` without it continues the build in DIR")
        built = (frame.path / "summary.json").is_file() and Path(dataset).is_file()
        summary: dict[str, Any] = json.loads((frame.path / "summary.json").read_text()) if built else {}
        if cfg.action in ("build", "all") and not (cfg.resume and built):
            summary = {"build": run_build(cfg, frame)}
        if cfg.action in ("train", "all"):
            if not Path(dataset).exists():
                raise OpenK1Error(f"{dataset}: no long-CoT dataset; run `openk1 longcot build` first")
            frame.begin()
            train_cfg = sft.SFTConfig(**{**{k: getattr(cfg, k) for k in sft.SFTConfig.model_fields},
                                         "data": dataset, "out": str(frame.path / "sft")})
            summary = {"build": summary.get("build", {}), **sft.run(train_cfg)}
        return frame.finish(summary)
