"""The language-model trainer shared by `openk1 pretrain`, `openk1 sft` and `openk1 longcot`.

    stages -> per stage: RoPE base, mixture of packed-row streams, steps from the budget
           -> per step: batch_size packed rows, split in micro-batches (gradient accumulation),
              block-diagonal causal attention, NLL over `action_mask` tokens, guarded step
           -> metrics.jsonl, evaluation loss, checkpoints/ (exact resume)

The loss of a step is sum(NLL of trained tokens) / (trained tokens of the whole batch), so any
micro-batch split gives the same gradient. Resume rebuilds the stage's mixture and skips the
rows already consumed: the data order, the counters and therefore the metrics are identical.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from tqdm import tqdm

from openk1.algo.logprobs import token_logprobs
from openk1.checkpoint import latest_checkpoint, load_state, save_checkpoint
from openk1.config import StageConfig
from openk1.data.mixture import Encoder, Mixture, PackedStream, source_name
from openk1.data.packing import Example, OverlongRule, block_causal_mask, collate
from openk1.distributed import fsdp, runtime
from openk1.errors import OpenK1Error
from openk1.models.forward import eval_mode
from openk1.optim import OptimConfig, guarded_step, make_optimizer, set_lr
from openk1.report.run_dir import RunDir
from openk1.schedules import Source, Stage, locate, stage_lr, stage_steps


class LMConfig(StageConfig):
    """What every LM stage shares; `stages` is the staged schedule (schedules.Stage)."""

    # --resume may also move the run to another device and change when the loss is evaluated
    resume_may_change = (*StageConfig.resume_may_change, "device", "eval_loss_every")

    stages: list[Stage] = Field(
        default_factory=list, description="the staged schedule (report §2.5): budget, length, mixture and LR per stage")
    batch_size: int = Field(32, gt=0, description="packed rows per optimizer step")
    micro_batch_size: int = Field(0, ge=0, description="rows per forward/backward (0 = batch_size: no accumulation)")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 = autocast; weights and Adam stay fp32")
    overlong: OverlongRule = Field("truncate",
                                   description="an example longer than max_seq_len: truncate, drop or split into rows")
    shuffle_buffer: int = Field(100_000, ge=0, description="rows held for shuffling (0 = file order)")
    optim: OptimConfig = Field(OptimConfig(),
                               description="AdamW: betas, weight decay, clipping (the LR comes from stages)")
    log_every: int = Field(10, gt=0, description="steps between metric lines")
    data_root: str = Field("", description="relative `sources` paths are resolved against this folder")
    eval_loss_data: str = Field("", description="rows to report the mean evaluation loss on")
    eval_loss_every: int = Field(0, ge=0,
                                 description="steps between evaluation-loss reports (0 = at the end of every stage)")
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints (0 = only at the end)")
    keep_checkpoints: int = Field(2, ge=0, description="newest checkpoints kept (0 = all)")
    device: str = Field("cpu", description="torch device of a single-process run (torchrun: each rank's own)")


def set_rope_theta(model: Any, theta: float) -> None:
    """Raise (or set) the RoPE base and rebuild the rotary embedding's frequencies."""
    config = model.config
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict):
        params["rope_theta"] = theta
    if hasattr(config, "rope_theta"):
        config.rope_theta = theta
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=config).to(rotary.inv_freq.device)


def apply_stage(model: Any, stage: Stage) -> None:
    if stage.rope_theta > 0:
        set_rope_theta(model, stage.rope_theta)
    if getattr(model.config, "max_position_embeddings", 0) < stage.max_seq_len:
        model.config.max_position_embeddings = stage.max_seq_len


def make_mixture(stage: Stage, cfg: LMConfig, encode: Encoder) -> Mixture:
    """The stage's sources (or the run's --data) as one weighted mixture."""
    sources = stage.sources or [Source(path=cfg.data)]
    paths = [str(Path(cfg.data_root) / s.path) if cfg.data_root else s.path for s in sources]
    streams = [PackedStream(path, encode, stage.max_seq_len, stage.pack, cfg.overlong, cfg.seed,
                            cfg.shuffle_buffer, salt=f"-{i}" if i else "") for i, path in enumerate(paths)]
    return Mixture(streams, [s.weight for s in sources],
                   [source_name(s.path, s.name) for s in sources])


def plan(stages: list[Stage], cfg: LMConfig, encode: Encoder) -> list[int]:
    """Optimizer steps of every stage (an epochs budget reads the mixture once to count rows)."""
    steps = []
    for stage in stages:
        rows = None
        if stage.epochs > 0:
            rows = sum(s.rows_per_pass() for s in make_mixture(stage, cfg, encode).streams)
        steps.append(stage_steps(stage, cfg.batch_size, rows))
    return steps


def batch_nll(model: Any, rows: list[list[Example]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """Summed NLL of the trained tokens of packed rows, and their number.

    input_ids [B, L]; logits [B, L, V]; logits[:, t] score token t + 1 where action_mask is 1.
    """
    batch = {k: v.to(device) for k, v in collate(rows, pad_id).items()}
    eager = getattr(model.config, "_attn_implementation", "") == "eager"
    kind: Literal["bool", "float"] = "float" if eager else "bool"
    mask = block_causal_mask(batch["segment_ids"], kind)                 # [B, 1, L, L]
    logits = model(input_ids=batch["input_ids"], attention_mask=mask,
                   position_ids=batch["position_ids"], use_cache=False).logits
    targets = batch["action_mask"][:, 1:]                                # [B, L-1]
    logp = token_logprobs(logits[:, :-1], batch["input_ids"][:, 1:]) * targets
    return -logp.sum(), int(targets.sum())


def accumulate(model: Any, rows: list[list[Example]], cfg: LMConfig, pad_id: int,
               device: torch.device) -> tuple[float, int]:
    """Backward over micro-batches; returns (batch loss = mean NLL per trained token, tokens)."""
    size = cfg.micro_batch_size or len(rows)
    total = sum(sum(sum(e.action_mask[1:]) for e in row) for row in rows)  # whole batch, all ranks
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16"
                else nullcontext())
    mine = runtime.shard(rows)           # under torchrun: this rank's share of the rows
    source = mine or rows[:1]            # weight-0 padding passes rerun a row (distributed/runtime.py)
    loss_sum = 0.0
    for index, weight in runtime.micro_batches(torch.arange(len(mine)), size):
        with autocast:
            nll, _ = batch_nll(model, [source[i] for i in index.tolist()], pad_id, device)
        ((nll / max(total, 1)) * weight).backward()
        loss_sum += weight * float(nll.detach())
    return runtime.all_reduce_sum(loss_sum) / max(total, 1), total


@torch.no_grad()
def eval_loss(model: Any, stage: Stage, cfg: LMConfig, encode: Encoder, pad_id: int,
              device: torch.device) -> float:
    """Mean NLL per trained token over one pass of `eval_loss_data`, packed as in `stage`."""
    stream = PackedStream(cfg.eval_loss_data, encode, stage.max_seq_len, stage.pack, cfg.overlong,
                          cfg.seed, 0)
    rows = list(stream.one_pass(0))
    nll, tokens = 0.0, 0
    size = cfg.micro_batch_size or cfg.batch_size
    with eval_mode(model):
        for s in range(0, len(rows), size):
            value, n = batch_nll(model, rows[s:s + size], pad_id, device)
            nll, tokens = nll + float(value), tokens + n
    return nll / max(tokens, 1)


def train_lm(model: Any, tokenizer: Any, cfg: LMConfig, stages: list[Stage], encode: Encoder,
             run_dir: RunDir) -> dict[str, Any]:
    """Run every stage; resumes from run_dir's latest checkpoint when cfg.resume (the model
    must already hold that checkpoint's weights: see `load_for_resume`)."""
    device = runtime.device() if runtime.is_distributed() else torch.device(cfg.device)
    trainee = fsdp.trainee(model)   # FSDP2 copy on this rank's device under torchrun, else model
    trainee.to(device).train()
    optimizer = make_optimizer(trainee, cfg.optim)
    state = _resume_state(cfg, run_dir, optimizer)
    steps = plan(stages, cfg, encode)   # reads the data once for an epochs budget: checks rows
    total, start = sum(steps), state["step"]
    if start > total:
        raise OpenK1Error(f"{run_dir.path}: --resume at step {start}, but the schedule has {total} steps")
    run_dir.write_config(cfg)   # the inputs are valid: the run starts writing
    done: dict[str, int] = state.get("data", {})
    loss_ema, last_eval = state.get("loss_ema", float("nan")), state.get("eval_loss", float("nan"))
    mixture: Mixture | None = None
    current = -1
    bar = tqdm(total=total, initial=start, desc=run_dir.path.name, unit="step", dynamic_ncols=True, mininterval=1.0,
               disable=not runtime.is_main())
    for step in range(start, total):
        index, local = locate(step, steps)
        stage = stages[index]
        if index != current:
            apply_stage(model, stage)
            if trainee is not model:
                apply_stage(trainee, stage)
            mixture, current = make_mixture(stage, cfg, encode), index
            mixture.skip(local * cfg.batch_size)
        assert mixture is not None
        lr = stage_lr(local, steps[index], stage.lr)
        set_lr(optimizer, lr)
        drawn = mixture.take(cfg.batch_size)
        loss, tokens = accumulate(trainee, [row for _, row in drawn], cfg, tokenizer.pad_token_id, device)
        stats = guarded_step(trainee, optimizer, cfg.optim.grad_clip)
        loss_ema = loss if math.isnan(loss_ema) else 0.9 * loss_ema + 0.1 * loss
        counts = {k: done.get(k, 0) + v for k, v in mixture.counters().items()}
        stage_end = local == steps[index] - 1
        metrics = {"loss": loss, "lr": lr, "stage": index, "seq_len": stage.max_seq_len,
                   "tokens": tokens, **stats, **_data_metrics(mixture, drawn, counts)}
        if cfg.eval_loss_data and ((cfg.eval_loss_every and (step + 1) % cfg.eval_loss_every == 0) or stage_end):
            last_eval = metrics["eval_loss"] = eval_loss(trainee, stage, cfg, encode, tokenizer.pad_token_id, device)
        if (step + 1) % cfg.log_every == 0 or stage_end or "eval_loss" in metrics:
            run_dir.log(step + 1, metrics)
        if stage_end:
            done, mixture, current = counts, None, -1
        if (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0) or step + 1 == total:
            fsdp.sync_weights(trainee, model)   # the full weights, to save (no-op alone)
            if runtime.is_main():               # FSDP: Adam shards are not saved
                save_checkpoint(run_dir.path, step + 1, model, tokenizer,
                                None if runtime.is_distributed() else optimizer,
                                {"loss_ema": loss_ema, "eval_loss": last_eval, "data": done},
                                cfg.keep_checkpoints)
        bar.set_postfix(loss=f"{loss_ema:.3f}", lr=f"{lr:.1e}", stage=index)
        bar.update()
    bar.close()
    fsdp.sync_weights(trainee, model)
    model.to("cpu")
    return {"final_loss": loss_ema, "steps": total, "stage_steps": steps, "eval_loss": last_eval,
            **{k: v for k, v in done.items() if k != "ok"}, "examples": sum(done.values())}


def _data_metrics(mixture: Mixture, drawn: list[tuple[int, list[Example]]],
                  counts: dict[str, int]) -> dict[str, float]:
    """Longest packed row of the step, example counts by over-long outcome (cumulative) and
    each source's share of the stage's rows so far."""
    return {"row_tokens/max": max(sum(len(e.ids) for e in row) for _, row in drawn),
            **{f"data/{k}": v for k, v in counts.items()},
            **{f"mix/{n}": t / sum(mixture.taken) for n, t in zip(mixture.names, mixture.taken)}}


def _resume_state(cfg: LMConfig, run_dir: RunDir, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    if not cfg.resume:
        return {"step": 0}
    state = load_state(latest_checkpoint(run_dir.path), None if runtime.is_distributed() else optimizer)
    run_dir.truncate_metrics(state["step"])
    return state


def model_path(cfg: LMConfig, run_dir: RunDir) -> str:
    """Where to load the model from: the latest checkpoint when resuming, else cfg.model."""
    return str(latest_checkpoint(run_dir.path) / "model") if cfg.resume else cfg.model
