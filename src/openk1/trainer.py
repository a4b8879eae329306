"""The language-model trainer shared by `openk1 pretrain`, `openk1 sft` and `openk1 longcot`.

    stages -> per stage: RoPE base, mixture of packed-row streams, steps from the budget
           -> per step (`LMSteps.step`, run by loop.py): batch_size packed rows, split in
              micro-batches (gradient accumulation), block-diagonal causal attention, NLL over
              `action_mask` tokens; the loop's LR, guarded step, logging and checkpoints
           -> metrics.jsonl, evaluation loss, checkpoints/ (exact resume)

The loss of a step is sum(NLL of trained tokens) / (trained tokens of the whole batch), so any
micro-batch split gives the same gradient. Resume rebuilds the stage's mixture and skips the
rows already consumed: the data order, the counters and therefore the metrics are identical.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from openk1.algo.logprobs import token_logprobs
from openk1.checkpoint import latest_checkpoint
from openk1.config import StageConfig
from openk1.data.mixture import Encoder, Mixture, PackedStream, source_name
from openk1.data.packing import Example, OverlongRule, block_causal_mask, collate
from openk1.data.sources import as_source
from openk1.distributed import runtime
from openk1.errors import OpenK1Error
from openk1.loop import Loop, accumulate_micro
from openk1.models.forward import eval_mode, learned_positions, rotary_module
from openk1.models.io import processor_of
from openk1.optim import OptimConfig
from openk1.report.run_dir import RunDir
from openk1.schedules import Source, Stage, locate, stage_steps, staged_lr


class LMConfig(StageConfig):
    """What every LM stage shares; `stages` is the staged schedule (schedules.Stage)."""

    # --resume may also move the run to another device and change when the loss is evaluated
    resume_may_change = (*StageConfig.resume_may_change, "eval_loss_every")


    stages: list[Stage] = Field(
        default_factory=list, description="the staged schedule (report §2.5): budget, length, mixture and LR per stage")
    batch_size: int = Field(32, gt=0, description="packed rows per optimizer step")
    micro_batch_size: int = Field(0, ge=0, description="rows per forward/backward (0 = batch_size: no accumulation)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="bf16 = autocast, weights and Adam stay fp32; auto: bf16 on CUDA, fp32 on CPU")
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


def set_rope_theta(model: Any, theta: float) -> None:
    """Raise (or set) the RoPE base and rebuild the rotary embedding's frequencies."""
    config = model.config
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict):
        params["rope_theta"] = theta
    if hasattr(config, "rope_theta"):
        config.rope_theta = theta
    base, rotary = rotary_module(model)
    base.rotary_emb = type(rotary)(config=config).to(rotary.inv_freq.device)


def check_stages(model: Any, stages: list[Stage], command: str = "train") -> None:
    """Refuse, before anything is written, a schedule the model cannot run: a RoPE base on a
    model without RoPE, or rows longer than its learned positions."""
    limit = learned_positions(model)
    for stage in stages:
        if stage.rope_theta > 0 and rotary_module(model)[1] is None:
            raise OpenK1Error(f"{command}: stage {stage.name!r} sets rope_theta, but "
                              f"{type(model).__name__} has no rotary embedding (learned positions)")
        if limit and stage.max_seq_len > limit:
            raise OpenK1Error(f"{command}: stage {stage.name!r} has max_seq_len {stage.max_seq_len}, but "
                              f"{type(model).__name__} has learned only {limit} positions; set "
                              f"max_seq_len <= {limit}")


def apply_stage(model: Any, stage: Stage) -> None:
    if stage.rope_theta > 0:
        set_rope_theta(model, stage.rope_theta)
    if getattr(model.config, "max_position_embeddings", 0) < stage.max_seq_len:
        model.config.max_position_embeddings = stage.max_seq_len


def make_mixture(stage: Stage, cfg: LMConfig, encode: Encoder) -> Mixture:
    """The stage's sources (or the run's --data) as one weighted mixture."""
    data = as_source(cfg.data)
    sources = stage.sources or [Source(path=data.path)]
    paths = [str(Path(cfg.data_root) / s.path) if cfg.data_root else s.path for s in sources]
    # --data keeps its preset and column mapping; a stage's own sources are openk1 rows
    inputs = [path if stage.sources else data.model_copy(update={"path": path}) for path in paths]
    streams = [PackedStream(source, encode, stage.max_seq_len, stage.pack, cfg.overlong, cfg.seed,
                            cfg.shuffle_buffer, salt=f"-{i}" if i else "") for i, source in enumerate(inputs)]
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


def sliding_layers(model: Any) -> bool:
    """Whether some attention layer of `model` has a sliding window (Mistral, Phi-3, Gemma 2/3,
    Qwen2 with use_sliding_window)."""
    config = model.config
    if "sliding_attention" in (getattr(config, "layer_types", None) or []):
        return True
    return bool(getattr(config, "sliding_window", None)) and bool(getattr(config, "use_sliding_window", True))


def packed_mask(model: Any, segment_ids: torch.Tensor) -> torch.Tensor | None:
    """The attention mask of packed rows: each token sees the earlier tokens of its own example.

    A block-causal mask [B, 1, L, L] (data/packing.py), or None for models with sliding-window
    layers: one 4D mask cannot carry a window per layer type, so HF builds each layer type's
    mask itself from the position ids, which restart at 0 in every example (transformers'
    packed-sequence detection; the windows counted within each example)."""
    if sliding_layers(model):
        return None
    eager = getattr(model.config, "_attn_implementation", "") == "eager"
    kind: Literal["bool", "float"] = "float" if eager else "bool"
    return block_causal_mask(segment_ids, kind)


def packed_forward(model: Any) -> str:
    """How the LM trainer runs `model` (for the run's summary: frame.py `note_forward`)."""
    if sliding_layers(model):
        return "hf (packed rows; per-layer masks from position ids: sliding-window layers)"
    return "hf (packed rows; block-causal mask)"


def batch_nll(model: Any, rows: list[list[Example]], pad_id: int, device: torch.device,
              processor: Any = None) -> tuple[torch.Tensor, int]:
    """Summed NLL of the trained tokens of packed rows, and their number.

    input_ids [B, L]; logits [B, L, V]; logits[:, t] score token t + 1 where action_mask is 1.
    Rows with images (a VLM; `processor` its processor) run from input embeddings: the batch's
    image features computed once, scattered into its image tokens (`model_inputs`).
    """
    collated = collate(rows, pad_id) if processor is None else collate(rows, pad_id, processor)
    batch = {k: v.to(device) for k, v in collated.items()}
    mask = packed_mask(model, batch["segment_ids"])                      # [B, 1, L, L] or None
    logits = model(**model_inputs(model, batch), attention_mask=mask,
                   position_ids=batch["position_ids"], use_cache=False).logits
    targets = batch["action_mask"][:, 1:]                                # [B, L-1]
    logp = token_logprobs(logits[:, :-1], batch["input_ids"][:, 1:]) * targets
    return -logp.sum(), int(targets.sum())


def model_inputs(model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{input_ids}, or for a batch with pixel_values {inputs_embeds}: the token embeddings with
    each image token's row replaced by its image's projected features (models/vision.py
    `image_features` once for the batch's images, then `embed`, in reading order)."""
    if "pixel_values" not in batch:
        return {"input_ids": batch["input_ids"]}
    from openk1.models.vision import embed, image_features

    return {"inputs_embeds": embed(model, batch["input_ids"], image_features(model, batch["pixel_values"]))}


def accumulate(model: Any, rows: list[list[Example]], cfg: LMConfig, pad_id: int,
               device: torch.device, processor: Any = None) -> tuple[float, int]:
    """Backward over micro-batches; returns (batch loss = mean NLL per trained token, tokens)."""
    total = sum(sum(sum(e.action_mask[1:]) for e in row) for row in rows)  # whole batch, all ranks
    bf16 = runtime.compute_precision(cfg.precision, device) == "bf16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def micro(index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        with autocast:
            nll, _ = batch_nll(model, [rows[i] for i in index.tolist()], pad_id, device, processor)
        return nll / max(total, 1), {"nll": float(nll.detach())}

    sums = accumulate_micro(len(rows), cfg.micro_batch_size or len(rows), micro)
    return sums.get("nll", 0.0) / max(total, 1), total


@torch.no_grad()
def eval_loss(model: Any, stage: Stage, cfg: LMConfig, encode: Encoder, pad_id: int,
              device: torch.device, processor: Any = None) -> float:
    """Mean NLL per trained token over one pass of `eval_loss_data`, packed as in `stage`."""
    stream = PackedStream(cfg.eval_loss_data, encode, stage.max_seq_len, stage.pack, cfg.overlong,
                          cfg.seed, 0)
    rows = list(stream.one_pass(0))
    nll, tokens = 0.0, 0
    size = cfg.micro_batch_size or cfg.batch_size
    with eval_mode(model):
        for s in range(0, len(rows), size):
            value, n = batch_nll(model, rows[s:s + size], pad_id, device, processor)
            nll, tokens = nll + float(value), tokens + n
    return nll / max(tokens, 1)


def train_lm(model: Any, tokenizer: Any, cfg: LMConfig, stages: list[Stage], encode: Encoder,
             run_dir: RunDir) -> dict[str, Any]:
    """Run every stage; resumes from run_dir's latest checkpoint when cfg.resume (the model
    must already hold that checkpoint's weights: see `model_path`)."""
    device = runtime.resolve_device(cfg.device)
    loop = Loop.for_model(model, tokenizer, cfg.optim, run_dir, log_every=cfg.log_every, device=device,
                          precision=runtime.compute_precision(cfg.precision, device),
                          checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints)
    state = loop.resume() if cfg.resume else {"step": 0}
    check_stages(model, stages)
    steps = plan(stages, cfg, encode)   # reads the data once for an epochs budget: checks rows
    total, start = sum(steps), state["step"]
    if start > total:
        raise OpenK1Error(f"{run_dir.path}: --resume at step {start}, but the schedule has {total} steps")
    run_dir.write_config(cfg)   # the inputs are valid: the run starts writing
    lm = LMSteps(model, loop.trainee, tokenizer.pad_token_id, cfg, stages, steps, encode, device, state,
                 processor_of(tokenizer))
    loop.run(start, total, partial(staged_lr, stages=stages, steps_per_stage=steps), lm.step,
             after=lm.after, state=lm.state, postfix=lm.postfix)
    return lm.summary()


class LMSteps:
    """The LM trainer's step function and what it carries from step to step (and through a
    checkpoint): the current stage's mixture, the example counts of the finished stages, the
    loss EMA and the last evaluation loss."""

    def __init__(self, model: Any, trainee: Any, pad_id: int, cfg: LMConfig, stages: list[Stage],
                 steps: list[int], encode: Encoder, device: torch.device, state: dict[str, Any],
                 processor: Any = None) -> None:
        self.model, self.trainee, self.pad_id, self.cfg = model, trainee, pad_id, cfg
        self.processor = processor   # a VLM's (models/io.py processor_of): pixel values of image rows
        self.stages, self.steps, self.encode, self.device = stages, steps, encode, device
        self.done: dict[str, int] = state.get("data", {})
        self.counts = self.done
        self.loss_ema: float = state.get("loss_ema", float("nan"))
        self.last_eval: float = state.get("eval_loss", float("nan"))
        self.mixture: Mixture | None = None
        self.current = -1

    def step(self, step: int) -> dict[str, Any]:
        """Draw step `step`'s batch_size packed rows and backward over them."""
        index, local = locate(step, self.steps)
        mixture = self._mixture(index, local)
        drawn = mixture.take(self.cfg.batch_size)
        loss, tokens = accumulate(self.trainee, [row for _, row in drawn], self.cfg, self.pad_id, self.device,
                                  self.processor)
        self.loss_ema = loss if math.isnan(self.loss_ema) else 0.9 * self.loss_ema + 0.1 * loss
        self.counts = {k: self.done.get(k, 0) + v for k, v in mixture.counters().items()}
        return {"loss": loss, "stage": index, "seq_len": self.stages[index].max_seq_len, "tokens": tokens,
                **_data_metrics(mixture, drawn, self.counts)}

    def after(self, step: int, metrics: dict[str, Any]) -> bool:
        """The evaluation loss when due (on the stepped weights); a stage's end closes its
        mixture. True: log this step (a stage's end or an evaluation)."""
        index, local = locate(step, self.steps)
        stage_end = local == self.steps[index] - 1
        every = self.cfg.eval_loss_every
        if self.cfg.eval_loss_data and ((every and (step + 1) % every == 0) or stage_end):
            self.last_eval = metrics["eval_loss"] = eval_loss(self.trainee, self.stages[index], self.cfg,
                                                              self.encode, self.pad_id, self.device, self.processor)
        if stage_end:
            self.done, self.mixture, self.current = self.counts, None, -1
        return stage_end or "eval_loss" in metrics

    def state(self) -> dict[str, Any]:
        return {"loss_ema": self.loss_ema, "eval_loss": self.last_eval, "data": self.done}

    def postfix(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {"loss": f"{self.loss_ema:.3f}", "lr": f"{metrics['lr']:.1e}", "stage": metrics["stage"]}

    def summary(self) -> dict[str, Any]:
        return {"final_loss": self.loss_ema, "steps": sum(self.steps), "stage_steps": self.steps,
                "eval_loss": self.last_eval, **{k: v for k, v in self.done.items() if k != "ok"},
                "examples": sum(self.done.values())}

    def _mixture(self, index: int, local: int) -> Mixture:
        """Stage `index`'s mixture, opened (RoPE and length applied, the rows of its first
        `local` steps skipped) when the step enters the stage or resumes inside it."""
        if index != self.current:
            stage = self.stages[index]
            apply_stage(self.model, stage)
            if self.trainee is not self.model:
                apply_stage(self.trainee, stage)
            self.mixture, self.current = make_mixture(stage, self.cfg, self.encode), index
            self.mixture.skip(local * self.cfg.batch_size)
        assert self.mixture is not None
        return self.mixture


def _data_metrics(mixture: Mixture, drawn: list[tuple[int, list[Example]]],
                  counts: dict[str, int]) -> dict[str, float]:
    """Longest packed row of the step, example counts by over-long outcome (cumulative) and
    each source's share of the stage's rows so far."""
    return {"row_tokens/max": max(sum(len(e.ids) for e in row) for _, row in drawn),
            **{f"data/{k}": v for k, v in counts.items()},
            **{f"mix/{n}": t / sum(mixture.taken) for n, t in zip(mixture.names, mixture.taken)}}


def model_path(cfg: LMConfig, run_dir: RunDir) -> str:
    """Where to load the model from: the latest checkpoint when resuming, else cfg.model."""
    return str(latest_checkpoint(run_dir.path) / "model") if cfg.resume else cfg.model
