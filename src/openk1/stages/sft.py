"""`openk1 sft`: supervised fine-tuning on (prompt, response) rows, loss on response tokens only.

The loss is the mean negative log-likelihood over trained tokens (`action_mask` = 1), the same
mask convention RL uses. Departures from the report (§2.5.2): no packing and one LR schedule
(warm-up + cosine) for now; the staged 32k -> 128k schedule comes with the LM trainer.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from typing import Any

import torch
from tqdm import tqdm

from openk1.config import StageConfig
from openk1.data.batching import encode_pairs
from openk1.data.io import load_problems, load_sft_rows
from openk1.models.forward import response_logprobs, trim
from openk1.models.io import load_model, save_model
from openk1.optim import OptimConfig, cosine_lr, guarded_step, make_optimizer, set_lr
from openk1.report.run_dir import RunDir
from openk1.stages.eval import EvalSettings, evaluate


class SFTConfig(StageConfig):
    epochs: int = 1
    max_steps: int = 0             # stop after this many optimizer steps (0 = all epochs)
    batch_size: int = 32
    max_response_tokens: int = 256
    optim: OptimConfig = OptimConfig()
    log_every: int = 10
    eval_data: str = ""            # problems to report held-out accuracy on at the end
    eval: EvalSettings = EvalSettings()


def sft_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Mean NLL over response tokens, and the number of tokens it averaged."""
    prompt_ids, prompt_mask, response_ids, action_mask = trim(
        batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"], batch["action_mask"])
    logp = response_logprobs(model, prompt_ids, prompt_mask, response_ids, action_mask)  # [B, T]
    tokens = int(action_mask.sum())
    return -logp.sum() / max(tokens, 1), tokens


def batches(pairs: list[tuple[str, str]], batch_size: int, seed: int, epoch: int) -> list[list[tuple[str, str]]]:
    order = list(range(len(pairs)))
    random.Random(f"{seed}-{epoch}").shuffle(order)
    return [[pairs[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]


def train(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], cfg: SFTConfig, run_dir: RunDir) -> dict[str, float]:
    """The SFT loop: shuffled mini-batches, warm-up + cosine LR, guarded steps."""
    optimizer = make_optimizer(model, cfg.optim)
    total = cfg.epochs * math.ceil(len(pairs) / cfg.batch_size)
    total = min(total, cfg.max_steps) if cfg.max_steps else total
    model.train()
    truncated, loss_ema = 0, float("nan")
    bar = tqdm(total=total, desc="sft", unit="step", dynamic_ncols=True, mininterval=1.0)
    schedule = ((epoch, chunk) for epoch in range(cfg.epochs)
                for chunk in batches(pairs, cfg.batch_size, cfg.seed, epoch))
    for step, (epoch, chunk) in enumerate(itertools.islice(schedule, total), start=1):
        lr = cosine_lr(step - 1, total, cfg.optim.lr, cfg.optim.lr_min, cfg.optim.warmup_steps)
        set_lr(optimizer, lr)
        batch = encode_pairs(tokenizer, [p for p, _ in chunk], [r for _, r in chunk],
                             cfg.max_response_tokens)
        truncated += batch["truncated"]
        loss, tokens = sft_loss(model, batch)
        loss.backward()
        stats = guarded_step(model, optimizer, cfg.optim.grad_clip)
        value = float(loss.detach())
        loss_ema = value if math.isnan(loss_ema) else 0.9 * loss_ema + 0.1 * value
        if step % cfg.log_every == 0 or step == total:
            run_dir.log(step, {"loss": value, "lr": lr, "tokens": tokens, "epoch": epoch,
                               "truncated": truncated, **stats})
        bar.set_postfix(loss=f"{loss_ema:.3f}", lr=f"{lr:.1e}")
        bar.update()
    bar.close()
    return {"final_loss": loss_ema, "steps": total, "truncated": truncated}


def run(cfg: SFTConfig) -> dict[str, Any]:
    model, tokenizer = load_model(cfg.model)
    pairs = load_sft_rows(cfg.data)
    held_out = load_problems(cfg.eval_data) if cfg.eval_data else []
    torch.manual_seed(cfg.seed)
    run_dir = RunDir(cfg.out)
    run_dir.write_config(cfg)
    start = time.perf_counter()
    summary: dict[str, Any] = train(model, tokenizer, pairs, cfg, run_dir)
    save_model(model, tokenizer, run_dir.path / "model")
    if held_out:
        summary.update({k: v for k, v in evaluate(model, tokenizer, held_out, cfg.eval).items()})
    summary["wall_seconds"] = time.perf_counter() - start
    summary["model"] = str(run_dir.path / "model")
    run_dir.write_summary(summary)
    run_dir.close()
    return summary
