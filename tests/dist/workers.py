"""What each rank runs in tests/dist (module-level functions: spawn pickles them by name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from openk1.dist import fsdp, runtime

AGGREGATIONS = ("token_mean", "seq_mean_token_mean")


def rl_update(rank: int, model_dir: str, batch_path: str, out_path: str) -> None:
    """rl.update on a fixed global rollout, once per aggregation; rank 0 saves loss + weights."""
    results = rl_update_results(model_dir, batch_path)
    if rank == 0:
        torch.save(results, out_path)


def rl_update_results(model_dir: str, batch_path: str) -> dict[str, Any]:
    from openk1.models.io import load_model
    from openk1.optim import OptimConfig, make_optimizer
    from openk1.stages import rl

    batch = torch.load(batch_path, weights_only=False)
    results: dict[str, Any] = {}
    for aggregation in AGGREGATIONS:
        model, _ = load_model(model_dir)
        trainee = fsdp.trainee(model)
        cfg = rl.RLConfig(aggregation=aggregation, micro_batch_size=3, minibatches_per_iter=3,
                          epochs_per_iter=2, tau=0.1, optim=OptimConfig(lr=0.01, warmup_steps=0))
        optimizer = make_optimizer(trainee, cfg.optim)
        metrics = rl.update(trainee, optimizer, batch["rollout"], batch["advantages"], cfg,
                            torch.Generator().manual_seed(5))
        results[aggregation] = {"metrics": metrics, "weights": fsdp.full_state_dict(trainee)}
    return results


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


def several(rank: int, calls: list[tuple[str, tuple[Any, ...]]]) -> None:
    """Run several workers in one process group (one spawn: process start-up dominates)."""
    for name, args in calls:
        globals()[name](rank, *args)
