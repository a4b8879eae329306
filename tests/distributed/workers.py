"""What each rank runs in tests/distributed (module-level functions: spawn pickles them by name)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from openk1.distributed import fsdp, runtime

AGGREGATIONS = ("token_mean", "seq_mean_token_mean")


def rl_update(rank: int, model_dir: str, batch_path: str, out_path: str) -> None:
    """rl.update on a fixed global rollout, once per aggregation and dtype; rank 0 saves the
    per-step stats, the first step's gradient and the final weights."""
    results = {dtype: rl_update_results(model_dir, batch_path, dtype) for dtype in DTYPES}
    if rank == 0:
        torch.save(results, out_path)


DTYPES = (torch.float32, torch.float64)


def rl_update_results(model_dir: str, batch_path: str, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Per aggregation: rl.update's metrics, each step's stats (`steps`), the full gradient of the
    first step before clipping (`grad`: the weights are still the loaded ones, so it is invariant
    to the number of ranks up to summation order) and the final full weights."""
    from openk1.models.io import load_model
    from openk1.optim import OptimConfig, make_optimizer
    from openk1.stages import rl

    batch = torch.load(batch_path, weights_only=False)
    # the rollout's log-probs in the run's dtype: summed in fp32, their rounding would depend on
    # each micro-batch's width (algo/opmd.py sums logp_old in its own dtype)
    rollout = dataclasses.replace(batch["rollout"], logp=batch["rollout"].logp.to(dtype))
    results: dict[str, Any] = {}
    from openk1 import loop as step_loop

    minibatch_step, guarded_step = rl.minibatch_step, step_loop.guarded_step
    for aggregation in AGGREGATIONS:
        model, _ = load_model(model_dir, dtype)
        trainee = fsdp.trainee(model)
        # lean: False: FSDP's sharded parameters take HF's forward (models/lean.py refuses them)
        cfg = rl.RLConfig(aggregation=aggregation, micro_batch_size=3, minibatches_per_iter=3,
                          epochs_per_iter=2, tau=0.1, lean=False, optim=OptimConfig(lr=0.01, warmup_steps=0))
        optimizer = make_optimizer(trainee, cfg.optim)
        steps: list[dict[str, float]] = []
        grad: dict[str, torch.Tensor] = {}
        # spies on this process's rl module only
        rl.minibatch_step = _recording(minibatch_step, steps)
        step_loop.guarded_step = _saving_first_grad(guarded_step, grad)
        try:
            metrics = rl.update(step_loop.Loop(None, trainee, optimizer, cfg.optim.grad_clip, 1), rollout,
                                batch["advantages"], cfg, torch.Generator().manual_seed(5))
        finally:
            rl.minibatch_step, step_loop.guarded_step = minibatch_step, guarded_step
        results[aggregation] = {"metrics": metrics, "steps": steps, "grad": grad,
                                "weights": fsdp.full_state_dict(trainee)}
    return results


def _recording(step: Any, steps: list[dict[str, float]]) -> Any:
    """`step` that also appends each of its results to `steps`."""
    def recording(*args: Any, **kwargs: Any) -> dict[str, float]:
        steps.append(step(*args, **kwargs))
        return steps[-1]
    return recording


def _saving_first_grad(guarded_step: Any, grad: dict[str, torch.Tensor]) -> Any:
    """`guarded_step` that first saves the full gradients of its first call into `grad` (a
    collective for DTensor gradients: every rank gets there in step)."""
    def saving(model: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
        if not grad:
            grad.update({n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
                         for n, p in model.named_parameters() if p.grad is not None})
        return guarded_step(model, *args, **kwargs)
    return saving


def rl_run(rank: int, values: dict[str, Any], out_dir: str) -> None:
    """The whole `openk1 rl` stage; every rank saves its plain (rollout) model's weights."""
    from openk1.config import build
    from openk1.stages import rl

    cfg = build(rl.RLConfig, values)
    seen: dict[str, Any] = {}
    original = fsdp.sync_weights

    def counting_sync(trainee: Any, model: Any) -> None:
        original(trainee, model)
        seen["syncs"] = seen.get("syncs", 0) + 1
        seen["weights"] = {k: v.clone() for k, v in model.state_dict().items()}
        seen["sharded"] = fsdp.local_numel(trainee) < fsdp.local_numel(model)

    fsdp.sync_weights = counting_sync   # type: ignore[assignment]   (spy on this process only)
    try:
        summary = rl.run(cfg)
    finally:
        fsdp.sync_weights = original    # type: ignore[assignment]
    torch.save({"summary": summary, **seen}, Path(out_dir) / f"rank{rank}.pt")


def sft_run(rank: int, values: dict[str, Any]) -> None:
    from openk1.config import build
    from openk1.stages import sft

    sft.run(build(sft.SFTConfig, values))
    assert runtime.world_size() == 2


def dpo_run(rank: int, values: dict[str, Any]) -> None:
    from openk1.config import build
    from openk1.stages import dpo

    dpo.run(build(dpo.DPOConfig, values))
    assert runtime.world_size() == 2


def killed_and_resumed(run: Any, config: type, values: dict[str, Any], every: int, cut: int) -> None:
    """A stage on 2 ranks checkpointing every `every` steps, "killed" after step `cut - every`
    (the step-`cut` checkpoint and the model removed), then resumed: Adam's full state comes
    back sharded."""
    import shutil

    import torch.distributed as dist

    from openk1.config import build

    values = {**values, "checkpoint_every": every, "keep_checkpoints": 0}
    run(build(config, values))
    dist.barrier()
    if runtime.rank() == 0:
        out = Path(values["out"])
        shutil.rmtree(out / "checkpoints" / f"step_{cut:06d}")
        shutil.rmtree(out / "model")
    dist.barrier()
    run(build(config, {**values, "resume": True}))


def dpo_killed_and_resumed(rank: int, values: dict[str, Any]) -> None:
    """`openk1 dpo`, checkpoints every step, killed after step 2."""
    from openk1.stages import dpo

    killed_and_resumed(dpo.run, dpo.DPOConfig, values, every=1, cut=3)


def sft_killed_and_resumed(rank: int, values: dict[str, Any]) -> None:
    """`openk1 sft`, checkpoints every 2 steps, killed after step 2."""
    from openk1.stages import sft

    killed_and_resumed(sft.run, sft.SFTConfig, values, every=2, cut=4)


def sft_one_rank(rank: int, values: dict[str, Any]) -> None:
    """`torchrun --nproc_per_node 1`: a process group of one, the FSDP2 path taken."""
    from torch.distributed.fsdp import FSDPModule

    from openk1.config import build
    from openk1.stages import sft

    taken: list[bool] = []
    original = fsdp.trainee
    fsdp.trainee = lambda model, *a: taken.append(isinstance(t := original(model, *a), FSDPModule)) or t  # type: ignore
    try:
        sft.run(build(sft.SFTConfig, values))
    finally:
        fsdp.trainee = original  # type: ignore[assignment]
    assert runtime.world_size() == 1 and taken == [True]


def rm_run(rank: int, values: dict[str, Any]) -> None:
    from openk1.config import build
    from openk1.stages import rm

    rm.run(build(rm.RMTrainConfig, values))
    assert runtime.world_size() == 2


def several(rank: int, calls: list[tuple[str, tuple[Any, ...]]]) -> None:
    """Run several workers in one process group (one spawn: process start-up dominates)."""
    for name, args in calls:
        globals()[name](rank, *args)


def counting_vision_forwards(rank: int, name: str, args: tuple[Any, ...], out_path: str) -> None:
    """Worker `name` on a sharded VLM, counting this rank's forwards by what ran the vision units
    (fsdp.VisionAgreement): its own images, the blank stand-in (another rank had images), neither."""
    counts = {"images": 0, "stand_in": 0, "text": 0}
    original = fsdp.VisionAgreement.before_root

    def counting(self: Any, module: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        had_images = self.agreed
        out = original(self, module, args, kwargs)
        counts["images" if had_images else "stand_in" if out is not None else "text"] += 1
        return out

    fsdp.VisionAgreement.before_root = counting   # type: ignore[method-assign]   (this process only)
    try:
        globals()[name](rank, *args)
    finally:
        fsdp.VisionAgreement.before_root = original   # type: ignore[method-assign]
    torch.save(counts, f"{out_path}.rank{rank}")
