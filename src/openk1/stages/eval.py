"""`openk1 eval`: held-out accuracy and mean response tokens with the training verifier.

accuracy = mean reward over all samples (k per problem, sampled as in training: the report's
Pass@1 averaged over samples); mean_tokens = mean number of generated tokens per response.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import torch
from pydantic import Field
from tqdm import tqdm

from openk1.config import Section, StageConfig
from openk1.data.io import load_problems, write_jsonl
from openk1.models.io import load_model
from openk1.report.run_dir import open_run
from openk1.rewards.scoring import RewardConfig, score_many
from openk1.rollout.hf import HFEngine, SamplingConfig
from openk1.types import Problem


class EvalSettings(Section):
    samples_per_prompt: int = Field(4, gt=0)
    temperature: float = Field(1.0, ge=0.0)   # 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(64, gt=0)
    batch_size: int = Field(256, gt=0)
    max_problems: int = Field(0, ge=0)   # 0 = every problem of the file
    seed: int = 1234
    score_workers: int = Field(0, ge=0)   # >0: verifiers in that many processes


class EvalConfig(StageConfig):
    eval: EvalSettings = EvalSettings()
    rewards: RewardConfig = RewardConfig()   # the same reward terms as training


def evaluate(model: Any, tokenizer: Any, problems: list[Problem], settings: EvalSettings,
             keep_samples: bool = False, rewards: RewardConfig | None = None) -> dict[str, Any]:
    """Sample, verify and summarise; the same verifiers as RL (`score_many`)."""
    if settings.max_problems:
        problems = problems[:settings.max_problems]
    sampling = SamplingConfig(temperature=settings.temperature, top_p=settings.top_p,
                              max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size)
    k = settings.samples_per_prompt
    engine = HFEngine(model, tokenizer, sampling)
    with tqdm(total=len(problems) * k, desc="eval", unit="sample", dynamic_ncols=True,
              mininterval=1.0, leave=False) as bar:
        engine.progress = bar.update
        rollout = engine.generate([p.prompt for p in problems], k, settings.seed)
        bar.set_postfix_str("verifying")
        repeated = [p for p in problems for _ in range(k)]
        scores = score_many(rollout.texts, repeated, settings.score_workers, rewards=rewards)
    rewards = torch.tensor([s.reward for s in scores])
    result: dict[str, Any] = {
        "accuracy": float(rewards.mean()),
        "mean_tokens": float(rollout.lengths.float().mean()),
        "problems": len(problems),
        "samples": len(scores),
        "accuracy_by_difficulty": by_difficulty(repeated, rewards),
    }
    if keep_samples:
        result["rows"] = [{"id": p.id, "prompt": p.prompt, "answer": p.answer, "response": t,
                           "reward": s.reward, "verdict": s.verdict, "tokens": int(n)}
                          for p, t, s, n in zip(repeated, rollout.texts, scores, rollout.lengths)]
    return result


def by_difficulty(problems: list[Problem], rewards: torch.Tensor) -> dict[str, float]:
    """Mean reward [N] per problem difficulty (eval's held-out split and RL's train metrics)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for p, r in zip(problems, rewards.tolist()):
        groups[str(p.difficulty)].append(r)
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


def run(cfg: EvalConfig) -> dict[str, Any]:
    """DIR/config.yaml, DIR/samples.jsonl (every sample, its reward and verdict), one row of
    DIR/metrics.jsonl and TensorBoard scalars (step 0), DIR/summary.json."""
    run_dir = open_run(cfg)   # the run-directory contract
    model, tokenizer = load_model(cfg.model)
    problems = load_problems(cfg.data)
    run_dir.write_config(cfg)
    start = time.perf_counter()
    result = evaluate(model, tokenizer, problems, cfg.eval, keep_samples=True, rewards=cfg.rewards)
    result["wall_seconds"] = time.perf_counter() - start
    write_jsonl(run_dir.path / "samples.jsonl", result.pop("rows"))
    run_dir.log(0, {f"eval/{k}": v for k, v in result.items() if isinstance(v, (int, float))})
    run_dir.write_summary(result)
    run_dir.close()
    return result
