"""`openk1 merge`: weighted average of two or more checkpoints of one architecture (report §2.4).

Long2short by model merging: average a long-CoT model with a short-CoT model of the same
lineage (e.g. the short-answer SFT model the long-CoT model was trained from); the report
averages the weights without saying with which ratio, so `weights` is ours to choose (default:
equal). The merge streams over safetensors shards (models/merge.py); with `eval_data` the merged
model is evaluated with the training verifier.

    openk1 merge --set 'models=[runs/rl/model, runs/sft_short/model]' --set 'weights=[0.7, 0.3]' --out DIR
"""

from __future__ import annotations

import math
import sys
import time
from typing import Annotated, Any

from pydantic import Field

from openk1.config import StageConfig
from openk1.data.io import load_problems
from openk1.data.sources import DataSource
from openk1.distributed import runtime
from openk1.frame import StageRun
from openk1.models.io import load_model
from openk1.models.merge import merge_checkpoints
from openk1.rewards.scoring import RewardConfig
from openk1.stages.eval import EvalSettings, evaluate


class MergeConfig(StageConfig):
    models: list[str] = Field(default_factory=list, description="two or more save_pretrained folders")
    weights: list[Annotated[float, Field(ge=0.0)]] = Field(default_factory=list,
                                                           description="one per model, normalised; [] = equal")
    eval_data: DataSource = Field(DataSource(), description="held-out problems to evaluate on (path or source)")
    eval: EvalSettings = Field(EvalSettings(), description="held-out evaluation settings")
    rewards: RewardConfig = Field(RewardConfig(), description="reward terms of the evaluation")


def run(cfg: MergeConfig) -> dict[str, Any]:
    with StageRun(cfg, tensorboard=False) as frame:
        held_out = load_problems(cfg.eval_data) if cfg.eval_data else []
        summary = merge_checkpoints(cfg.models, cfg.weights, frame.path / "model", checked=frame.begin)
        summary["weights_renormalised"] = renormalised(cfg.weights, summary["weights"])
        summary["merge_seconds"] = time.perf_counter() - frame.started
        if held_out:
            model, tokenizer = load_model(summary["model"], prompts=cfg, device=runtime.resolve_device(cfg.device))
            result = evaluate(model, tokenizer, held_out, cfg.eval, rewards=cfg.rewards)
            summary.update({k: result[k] for k in ("accuracy", "mean_tokens", "accuracy_by_difficulty")})
        return frame.finish(summary)


def renormalised(given: list[float], used: list[float]) -> bool:
    """Say (on stderr) when the weights given do not sum to 1 and were scaled to."""
    if not given or math.isclose(sum(given), 1.0, rel_tol=0.0, abs_tol=1e-9):
        return False
    print(f"merge: weights {given} sum to {sum(given):g}; renormalised to "
          f"{[round(w, 6) for w in used]}", file=sys.stderr)
    return True
