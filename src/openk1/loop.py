"""The step loop every step-based trainer shares (trainer.py's pretrain/sft/longcot, `openk1 dpo`).

    per optimizer step (0-based `step`, logged and saved as step + 1):
        lr_at(step) -> set_lr
        step_fn(step): the stage's forward + backward, returns its metrics
        guarded step (clip; a non-finite gradient skips it: optim.py) -> metrics + grad_norm, skipped, lr
        after(step, metrics): what needs the stepped weights (an evaluation), may add metrics
        metrics.jsonl + TensorBoard every `log_every` steps, at the last and where `after` says
        checkpoint every `checkpoint_every` steps and at the last: the FSDP2 trainee's weights
        gathered into the plain model first (distributed/fsdp.py), rank 0 writes
        progress bar

`Loop.resume` restores the optimizer (one process; FSDP's Adam shards are not saved and it
restarts), the RNG states and the stage's own checkpoint state, and drops the metric lines after
the checkpoint; `run(start, ...)` then takes the remaining steps. A stage whose batch of step s
is a function of s (or that skips what earlier steps consumed) resumes exactly.

The RL update (stages/rl.py) drives the same loop at two levels: `drive` over iterations (its
body rolls out, scores and updates; the loop logs, evaluates through `after`, checkpoints every
`checkpoint_every` iterations, shows the bar), and `step` for each of the iteration's optimizer
steps (its own LR warm-up per iteration; a step function that finds a non-finite loss on any rank
returns `skipped` = 1 and the loop drops the gradient without stepping).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from tqdm import tqdm

from openk1.checkpoint import latest_checkpoint, load_state, save_checkpoint
from openk1.distributed import fsdp, runtime
from openk1.optim import OptimConfig, guarded_step, make_optimizer, set_lr
from openk1.report.run_dir import RunDir

Metrics = dict[str, Any]
StepFn = Callable[[int], Metrics]                  # step -> metrics, after forward + backward
AfterFn = Callable[[int, Metrics], bool]           # step, metrics (added to) -> log this step
MicroFn = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class Loop:
    """The optimizer steps of one run: LR, guarded step, logging, checkpoints, progress bar.

    `trainee` takes the steps (the FSDP2 copy under torchrun, else `model` itself); `model` is
    the plain module a checkpoint saves (None: the loop never checkpoints).
    """

    run_dir: RunDir
    trainee: Any
    optimizer: torch.optim.Optimizer
    grad_clip: float
    log_every: int
    model: Any = None
    tokenizer: Any = None
    checkpoint_every: int = 0     # steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2     # newest kept (0 = all)
    save_optimizer: bool = True   # Adam's state in checkpoints (under FSDP2: gathered in full)
    synced: bool = False          # the stage hands the weights to `model` itself (RL: each iteration)

    @classmethod
    def for_model(cls, model: Any, tokenizer: Any, optim: OptimConfig, run_dir: RunDir, *, log_every: int,
                  checkpoint_every: int, keep_checkpoints: int, device: torch.device | None = None,
                  precision: str = "fp32") -> Loop:
        """`model` moved to `device` (it rolls out, evaluates and is saved there), the trainee
        (FSDP2 copy on this rank's device under torchrun, else `model`) in train mode, and AdamW
        over it (its state created on the trainee's device)."""
        if device is not None:
            model.to(device)
        trainee = fsdp.trainee(model, precision)
        trainee.train()
        return cls(run_dir, trainee, make_optimizer(trainee, optim), optim.grad_clip, log_every, model,
                   tokenizer, checkpoint_every, keep_checkpoints)

    def resume(self) -> dict[str, Any]:
        """Restore the latest checkpoint's optimizer (under FSDP2 each rank takes its shards of
        the full state) and RNG states and drop the metrics after it; returns its state (`step`
        and what the stage saved)."""
        state = load_state(latest_checkpoint(self.run_dir.path),
                           partial(fsdp.load_optimizer_state, self.trainee, self.optimizer))
        self.run_dir.truncate_metrics(state["step"])
        return state

    def run(self, start: int, total: int, lr_at: Callable[[int], float], step_fn: StepFn, *,
            after: AfterFn | None = None, state: Callable[[], dict[str, Any]] = dict,
            postfix: Callable[[Metrics], dict[str, Any]] | None = None, desc: str = "") -> Metrics:
        """Optimizer steps start..total-1 (module doc); `state()` is saved with each checkpoint.
        Returns the last step's metrics ({} when there was none)."""
        return self.drive(start, total, lambda step: self.step(step, lr_at(step), step_fn), after=after,
                          state=state, postfix=postfix, desc=desc)

    def drive(self, start: int, total: int, body: StepFn, *, after: AfterFn | None = None,
              state: Callable[[], dict[str, Any]] = dict, postfix: Callable[[Metrics], dict[str, Any]] | None = None,
              desc: str = "", unit: str = "step") -> Metrics:
        """`body(i)` for i in start..total-1, each followed by `after`, logging, checkpointing
        and the progress bar; `run` drives optimizer steps, the RL stage drives iterations."""
        bar = tqdm(total=total, initial=start, desc=desc or self.run_dir.path.name, unit=unit,
                   dynamic_ncols=True, mininterval=1.0, disable=not runtime.is_main())
        metrics: Metrics = {}
        for step in range(start, total):
            metrics = body(step)
            marked = after(step, metrics) if after is not None else False
            if (step + 1) % self.log_every == 0 or step + 1 == total or marked:
                self.run_dir.log(step + 1, metrics)
            if self._checkpoint_due(step + 1, total):
                self.save(step + 1, state())
            bar.set_postfix(postfix(metrics) if postfix is not None else {"loss": f"{metrics['loss']:.3f}"})
            bar.update()
        bar.close()
        return metrics

    def step(self, step: int, lr: float, step_fn: StepFn) -> Metrics:
        """One optimizer step at `lr`: step_fn's backward, then clip and step (or skip). A step_fn
        that returns `skipped` = 1 (a non-finite loss) has its gradient dropped, no step taken."""
        set_lr(self.optimizer, lr)
        metrics = step_fn(step)
        if metrics.get("skipped"):
            self.optimizer.zero_grad(set_to_none=True)
            return {**metrics, "grad_norm": float("nan"), "lr": lr}
        return {**metrics, **guarded_step(self.trainee, self.optimizer, self.grad_clip), "lr": lr}

    def save(self, step: int, state: dict[str, Any]) -> None:
        """Checkpoint `step`: every rank gathers the full weights into `model` and the full
        optimizer state to rank 0 (collectives under FSDP2), rank 0 writes."""
        if not self.synced:
            fsdp.sync_weights(self.trainee, self.model)   # no-op in one process
        optimizer = fsdp.optimizer_state(self.trainee, self.optimizer) if self.save_optimizer else None
        if runtime.is_main():
            save_checkpoint(self.run_dir.path, step, self.model, self.tokenizer, optimizer, state,
                            self.keep_checkpoints)

    def _checkpoint_due(self, done: int, total: int) -> bool:
        if self.model is None:
            return False
        return done == total or bool(self.checkpoint_every and done % self.checkpoint_every == 0)


def accumulate_micro(count: int, size: int, micro_fn: MicroFn) -> dict[str, float]:
    """Backward over this rank's share of a step's `count` items in micro-batches of `size`.

    `micro_fn(index)` [b] -> (the loss of those items, already divided by the whole step's
    normaliser, so that any split gives the same gradient; their metric terms). Returns every
    term summed over micro-batches and ranks. Weight-0 padding passes (distributed/runtime.py
    `micro_batches`) keep each rank's FSDP collectives in step and count 0 times.
    """
    totals: dict[str, float] = {}
    for index, weight in runtime.micro_batches(runtime.shard(torch.arange(count, device="cpu")), size):
        loss, terms = micro_fn(index)
        (loss * weight).backward()
        for key, value in terms.items():
            totals[key] = totals.get(key, 0.0) + value * weight
    return {key: runtime.all_reduce_sum(value) for key, value in totals.items()}
