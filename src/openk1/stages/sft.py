"""`openk1 sft`: supervised fine-tuning with the shared LM trainer, loss on response tokens only.

Rows: `prompt` + `response` (the prompt encoded exactly as the rollout engine encodes it), or
`messages` (the tokenizer's chat template when it has one; assistant turns trained). The loss
is the mean NLL over trained tokens (`action_mask` = 1), the mask convention RL uses.

Report §2.5.2: examples packed; epoch 1 at 32k context with LR 2e-5 -> 2e-6, epoch 2 at 128k
re-warmed to 1e-5 -> 1e-6: `presets/sft_k15.yaml` (`stages`). Without `stages` the run is one
stage built from the plain fields below (epochs, max_steps, optim.lr -> optim.lr_min with
optim.warmup_steps, cosine), unpacked (one example per row) unless `max_seq_len` is set.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from pydantic import Field, model_validator

from openk1.data.io import load_problems
from openk1.data.packing import encode_row
from openk1.data.sources import DataSource
from openk1.distributed import runtime
from openk1.frame import StageRun
from openk1.models.forward import forward_path, response_logprobs, trim
from openk1.models.io import load_model
from openk1.optim import OptimConfig, check_decay
from openk1.schedules import LRSchedule, Stage
from openk1.stages.eval import EvalSettings, evaluate
from openk1.trainer import LMConfig, model_path, packed_forward, train_lm


class SFTConfig(LMConfig):
    # Defaults for a pretrained checkpoint (TRL's SFT: 3 epochs, lr 2e-5); a model made by
    # `openk1 init-model` recommends its own (models/tiny.py RECOMMENDED), which the CLI applies.
    optim: OptimConfig = Field(
        OptimConfig(lr=2e-5, lr_min=2e-6, warmup_steps=10),
        description="AdamW; without `stages` also the schedule: warm-up, then cosine lr -> lr_min")
    epochs: int = Field(3, ge=0, description="passes over the data (without `stages`)")
    max_steps: int = Field(0, ge=0, description="stop after this many optimizer steps (0 = all epochs)")
    batch_size: int = Field(32, gt=0, description="rows per step: examples (unpacked) or packed rows")
    max_response_tokens: int = Field(256, gt=0, description="longer responses are cut (counted in `truncated`)")
    max_seq_len: int = Field(0, ge=0, description="> 0: pack examples into rows of this many tokens")
    eval_data: DataSource = Field(DataSource(), description="held-out problems: accuracy at the end (path or source)")
    eval: EvalSettings = Field(EvalSettings(), description="held-out evaluation settings")

    @model_validator(mode="after")
    def _plain_schedule(self) -> SFTConfig:
        if not self.stages:            # the one stage built from optim.lr -> optim.lr_min
            check_decay(self.optim)
        return self


def sft_stages(cfg: SFTConfig) -> list[Stage]:
    """cfg.stages, or the one stage the plain fields describe."""
    if cfg.stages:
        return list(cfg.stages)
    lr = LRSchedule(lr_max=cfg.optim.lr, lr_min=cfg.optim.lr_min,
                    warmup_steps=cfg.optim.warmup_steps, decay="cosine")
    return [Stage(name="sft", max_seq_len=cfg.max_seq_len, pack=cfg.max_seq_len > 0,
                  epochs=cfg.epochs, max_steps=cfg.max_steps, lr=lr)]


def sft_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Unpacked reference: mean NLL over response tokens of an `encode_pairs` batch, and the
    number of tokens it averaged (the packed trainer must agree with it, tests/stages)."""
    prompt_ids, prompt_mask, response_ids, action_mask = trim(
        batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"], batch["action_mask"])
    logp = response_logprobs(model, prompt_ids, prompt_mask, response_ids, action_mask)  # [B, T]
    tokens = int(action_mask.sum())
    return -logp.sum() / max(tokens, 1), tokens


def run(cfg: SFTConfig) -> dict[str, Any]:
    with StageRun(cfg) as frame:
        model, tokenizer = load_model(model_path(cfg, frame.dir), prompts=cfg)
        held_out = load_problems(cfg.eval_data) if cfg.eval_data else []
        torch.manual_seed(cfg.seed)
        encode = partial(encode_row, tokenizer=tokenizer, max_response_tokens=cfg.max_response_tokens)
        summary: dict[str, Any] = train_lm(model, tokenizer, cfg, sft_stages(cfg), encode, frame.dir)
        summary.setdefault("truncated", 0)
        summary["model"] = frame.save_model(model, tokenizer)
        frame.note_forward("update", packed_forward(model))
        if held_out and runtime.is_main():
            frame.note_forward("eval", forward_path(model, cfg.eval.sampling.lean))
            summary.update(evaluate(model, tokenizer, held_out, cfg.eval))
        return frame.finish(summary)
