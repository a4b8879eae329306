"""`openk1 dpo`: direct preference optimisation on `prompt` + `chosen` + `rejected` rows.

    pairs -> reference log-probs, once, with the starting model (saved in DIR, reused on resume)
          -> per step: batch_size pairs (micro-batches), sequence log-probs of chosen and rejected
             under the policy (one forward over both), `algo.dpo.dpo_loss`, guarded step
          -> metrics.jsonl + TensorBoard, checkpoints/ (exact resume), model/, optional eval

Used by long2short (report §2.4) with pairs chosen = the shortest correct answer, rejected = a
wrong answer or a correct one at least 1.5x longer; any preference pairs work. Responses are
encoded like SFT responses (EOS appended, trained where `action_mask` is 1). The report gives no
DPO hyper-parameters: beta, the learning rate and the optional SFT term (`nll_weight`) are ours.
The data order is a function of (seed, epoch), so resume needs no data state.

Rows may carry `images` (docs/vision.md "DPO, reward models, curate and long2short with
images"): read and checked when the pairs load, as SFT rows' (data/packing.py `with_images`: a bad
image names the file, line and image; no `<image>` marker = the images in front of the prompt).
A VLM (its processor on the tokenizer) scores such a pair's prompt with its image tokens expanded
(models/vlm.py `prompt_tokens`) and the image features in place (models/forward.py
`response_logprobs(images=...)`), for the policy and the reference alike; a text model refuses them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator

from openk1.algo.dpo import dpo_loss
from openk1.checkpoint import check_resume_step, latest_checkpoint
from openk1.config import StageConfig
from openk1.data.batching import encode_responses
from openk1.data.images import ImageRef
from openk1.data.io import _field, load_problems, read_located
from openk1.data.packing import with_images
from openk1.data.sources import DataSource
from openk1.distributed import runtime
from openk1.frame import StageRun
from openk1.loop import Loop, accumulate_micro
from openk1.models.forward import eval_mode, forward_path, response_logprobs, trim
from openk1.models.io import load_model, processor_of
from openk1.models.vlm import prompt_tokens, require_processor
from openk1.optim import OptimConfig, check_decay, cosine_lr
from openk1.padding import pad
from openk1.report.run_dir import RunDir, atomic_file
from openk1.rewards.scoring import RewardConfig
from openk1.stages.eval import EvalSettings, evaluate

REFERENCE_FILE = "reference_logp.pt"


@dataclass(frozen=True)
class Pair:
    """One preference row: the prompt (its `<image>` markers placed, one per image), the chosen
    and the rejected response, and the prompt's images (() for a text row). Unpacks as its texts:
    `prompt, chosen, rejected = pair`."""

    prompt: str
    chosen: str
    rejected: str
    images: tuple[ImageRef, ...] = ()

    def __iter__(self) -> Iterator[str]:
        return iter((self.prompt, self.chosen, self.rejected))


class DPOConfig(StageConfig):
    beta: float = Field(0.1, gt=0.0, description="DPO's beta: the implicit KL weight")
    nll_weight: float = Field(0.0, ge=0.0, description="> 0: add the chosen responses' mean NLL per token (SFT term)")
    epochs: int = Field(1, ge=0, description="passes over the pairs")
    max_steps: int = Field(0, ge=0, description="caps the steps of `epochs` (epochs 0: exactly max_steps)")
    batch_size: int = Field(16, gt=0, description="pairs per optimizer step")
    micro_batch_size: int = Field(0, ge=0, description="pairs per forward/backward (0 = batch_size)")
    max_response_tokens: int = Field(256, gt=0, description="longer responses are cut")
    optim: OptimConfig = Field(OptimConfig(lr=1e-6, lr_min=1e-7, warmup_steps=0),
                               description="AdamW and its schedule (TRL's DPO lr)")
    log_every: int = Field(10, gt=0, description="steps between metric lines")
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints (0 = only at the end)")
    keep_checkpoints: int = Field(2, ge=0, description="newest checkpoints kept (0 = all)")
    eval_data: DataSource = Field(DataSource(), description="held-out problems evaluated at the end (path or source)")
    eval: EvalSettings = Field(EvalSettings(), description="held-out evaluation settings")
    rewards: RewardConfig = Field(RewardConfig(), description="reward terms of the held-out evaluation")

    @model_validator(mode="after")
    def _decay(self) -> DPOConfig:
        check_decay(self.optim)
        return self


def load_pairs(path: str | Path) -> list[Pair]:
    """The pair of every row; a missing field names the file and row, a bad image the file, row
    and image (`images`: paths relative to the data file's folder, or data URIs)."""
    pairs = []
    for where, row in read_located(path):
        prompt, chosen, rejected = (_field(row, name, str, where) for name in ("prompt", "chosen", "rejected"))
        images: tuple[ImageRef, ...] = ()
        if row.get("images") is not None:
            read = with_images(row, where)     # each image read and decoded, the prompt's markers placed
            prompt, images = read["prompt"], tuple(read["images"])
        pairs.append(Pair(prompt, chosen, rejected, images))
    return pairs


def total_steps(cfg: DPOConfig, pairs: int) -> int:
    """Optimizer steps: epochs x ceil(pairs / batch_size), capped by max_steps when set.

    >>> total_steps(DPOConfig(epochs=2, batch_size=4), 10), total_steps(DPOConfig(epochs=0, max_steps=7), 10)
    (6, 7)
    """
    per_epoch = math.ceil(pairs / cfg.batch_size)
    if not cfg.epochs:
        return cfg.max_steps
    return min(cfg.epochs * per_epoch, cfg.max_steps) if cfg.max_steps else cfg.epochs * per_epoch


def step_indices(step: int, pairs: int, batch_size: int, seed: int) -> torch.Tensor:
    """The pairs of optimizer step `step`: a fresh permutation per epoch, seeded by (seed, epoch)."""
    per_epoch = math.ceil(pairs / batch_size)
    epoch, local = divmod(step, per_epoch)
    order = torch.randperm(pairs, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch), device="cpu")
    return order[local * batch_size:(local + 1) * batch_size]


def sequence_logps(model: Any, tokenizer: Any, pairs: list[Pair],
                   max_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed log-probs of chosen [b] and rejected [b] responses (one forward over 2b rows), and
    the number of chosen tokens [b]. Prompts are tokenized as the rollout engine does, each
    `<image>` expanded for its image (models/vlm.py `prompt_tokens`); a batch with images runs
    the VLM path with its features (models/forward.py `vision_logprobs`), a text batch as before."""
    b = len(pairs)
    rows = list(pairs) * 2                                                # [chosen rows | rejected rows]
    prompt_ids, prompt_mask = pad([prompt_tokens(tokenizer, p.prompt, p.images) for p in rows],
                                  tokenizer.pad_token_id, side="left")     # [2b, P]
    response_ids, action_mask, _ = encode_responses(
        tokenizer, [p.chosen for p in pairs] + [p.rejected for p in pairs], max_tokens)   # [2b, T]
    device = next(model.parameters()).device
    prompt_ids, prompt_mask, response_ids, action_mask = (x.to(device) for x in trim(
        prompt_ids, prompt_mask, response_ids, action_mask))
    images = [p.images for p in rows] if any(p.images for p in pairs) else None
    logp = response_logprobs(model, prompt_ids, prompt_mask, response_ids, action_mask,
                             images=images, processor=processor_of(tokenizer))   # [2b, T]
    seq = logp.sum(-1)                                                    # [2b]
    return seq[:b], seq[b:], action_mask[:b].sum(-1)


@torch.no_grad()
def reference_logps(model: Any, tokenizer: Any, pairs: list[Pair], cfg: DPOConfig) -> torch.Tensor:
    """[N, 2] sequence log-probs of (chosen, rejected) under the starting model, computed once."""
    size = cfg.micro_batch_size or cfg.batch_size
    parts = []
    with eval_mode(model):
        for s in range(0, len(pairs), size):
            chosen, rejected, _ = sequence_logps(model, tokenizer, pairs[s:s + size], cfg.max_response_tokens)
            parts.append(torch.stack([chosen, rejected], dim=-1))
    return torch.cat(parts)


def train_step(model: Any, tokenizer: Any, pairs: list[Pair], reference: torch.Tensor,
               cfg: DPOConfig) -> dict[str, float]:
    """Backward over micro-batches of one step's pairs; returns the step's loss and metrics.

    Under torchrun each rank takes its share of the pairs; the normaliser is the step's pair
    count, so the summed gradients equal one process's (loop.py `accumulate_micro`)."""

    def micro(index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected, tokens = sequence_logps(model, tokenizer, [pairs[i] for i in index.tolist()],
                                                  cfg.max_response_tokens)
        ref = reference[index].to(chosen.device)                            # [b, 2]
        loss, metrics = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], cfg.beta,
                                 normaliser=len(pairs), chosen_tokens=tokens, nll_weight=cfg.nll_weight)
        share = len(index) / len(pairs)                                     # means -> batch means
        return loss, {"loss": float(loss.detach()), **{k: float(v) * share for k, v in metrics.items()}}

    return accumulate_micro(len(pairs), cfg.micro_batch_size or len(pairs), micro)


def run(cfg: DPOConfig) -> dict[str, Any]:
    with StageRun(cfg) as frame:
        pairs = load_pairs(cfg.data.plain_path("dpo"))
        held_out = load_problems(cfg.eval_data) if cfg.eval_data else []
        if cfg.resume:
            check_resume_step(latest_checkpoint(frame.path), total_steps(cfg, len(pairs)), "steps")
        model, tokenizer = load_model(str(latest_checkpoint(frame.path) / "model") if cfg.resume else cfg.model,
                                      prompts=cfg)
        if any(p.images for p in pairs):
            require_processor(tokenizer)   # pairs with images need a VLM: refused before anything is written
        frame.begin()   # the inputs are valid: the run starts writing
        frame.note_forward("update", forward_path(model))
        reference = _reference(cfg, frame.dir, pairs)
        loop = Loop.for_model(model, tokenizer, cfg.optim, frame.dir, log_every=cfg.log_every,
                              device=runtime.resolve_device(cfg.device),
                              checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints)
        first = loop.resume()["step"] if cfg.resume else 0
        summary = train(loop, tokenizer, pairs, reference, cfg, first)
        summary.update(model=frame.save_model(model, tokenizer), pairs=len(pairs))
        if held_out and runtime.is_main():
            result = evaluate(model, tokenizer, held_out, cfg.eval, rewards=cfg.rewards)
            summary.update({k: result[k] for k in ("accuracy", "mean_tokens", "accuracy_by_difficulty")})
        return frame.finish(summary)


def _reference(cfg: DPOConfig, run_dir: RunDir, pairs: list[Pair]) -> torch.Tensor:
    """DIR/reference_logp.pt when resuming, else computed with cfg.model and saved there."""
    path = run_dir.path / REFERENCE_FILE
    if cfg.resume and path.is_file():
        saved: torch.Tensor = torch.load(path)   # [pairs, 2]: chosen, rejected
        return saved
    model, tokenizer = load_model(cfg.model, prompts=cfg, device=runtime.resolve_device(cfg.device))
    reference = reference_logps(model, tokenizer, pairs, cfg).cpu()   # every rank: same numbers
    if runtime.is_main():
        with atomic_file(path) as tmp:
            torch.save(reference, tmp)
    return reference


def train(loop: Loop, tokenizer: Any, pairs: list[Pair], reference: torch.Tensor, cfg: DPOConfig,
          first: int) -> dict[str, Any]:
    """Steps first..total-1 with a cosine LR (loop.py: logs, checkpoints, progress bar); the pairs
    of a step are a function of the step, so resume needs no data state."""
    total = total_steps(cfg, len(pairs))

    def step(s: int) -> dict[str, float]:
        index = step_indices(s, len(pairs), cfg.batch_size, cfg.seed)
        return train_step(loop.trainee, tokenizer, [pairs[i] for i in index.tolist()], reference[index], cfg)

    lr_at = partial(cosine_lr, total=total, lr_max=cfg.optim.lr, lr_min=cfg.optim.lr_min,
                    warmup=cfg.optim.warmup_steps)
    stats = loop.run(first, total, lr_at, step,
                     postfix=lambda m: {"loss": f"{m['loss']:.3f}", "margin": f"{m['reward/margin']:.2f}"})
    return {"steps": total, "final_loss": stats.get("loss", float("nan")),
            "final_margin": stats.get("reward/margin", float("nan")),
            "final_pair_accuracy": stats.get("reward/accuracy", float("nan"))}
