"""torch.distributed helpers that every trainer (RL, SFT/pretrain, DPO) shares.

Each helper is a no-op (or the identity) in one process, so stage code calls them
unconditionally and reads the same whether it runs alone or under `torchrun`:

    world_size() / rank() / is_main()       who am I (1 / 0 / True without torchrun)
    shard(x)                                this rank's contiguous share of a list or 1-D tensor
    shard_map(fn, *lists)                   fn on this rank's share, results gathered in order
    micro_batches(index, size)              micro-batches padded to the same count on all ranks
    all_reduce_sum / all_reduce_max / all_true / all_gather_objects

Process-group lifetime: `init_from_env()` (called by `openk1` when torchrun set WORLD_SIZE > 1)
and `shutdown()`, which barriers before destroy_process_group (without it gloo can crash at
exit).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from openk1.errors import OpenK1Error

T = TypeVar("T")


def is_distributed() -> bool:
    """In a process group (torchrun, any number of ranks: one rank runs the FSDP2 path too)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """This rank's device: cuda:LOCAL_RANK when CUDA is there, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def resolve_device(setting: str = "auto") -> torch.device:
    """The torch device a stage's `device` key names: auto (this rank's GPU when CUDA is there,
    else the CPU), cpu, cuda (under torchrun: this rank's GPU) or cuda:N. CUDA where there is
    none is an OpenK1Error naming what torch reports."""
    if setting == "auto":
        return device()
    if setting == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
        raise OpenK1Error(f"device: {setting} asked for, but CUDA is not available ({build}, "
                          f"{torch.cuda.device_count()} GPUs visible); set device: cpu or auto")
    if setting == "cuda":
        return device()
    index = int(setting.split(":", 1)[1])
    if index >= torch.cuda.device_count():
        raise OpenK1Error(f"device: {setting}, but only {torch.cuda.device_count()} GPUs are visible")
    return torch.device("cuda", index)


def compute_precision(setting: str, where: torch.device) -> str:
    """`precision: auto` is bf16 on CUDA (autocast over fp32 master weights) and fp32 elsewhere.

    >>> compute_precision("auto", torch.device("cpu")), compute_precision("bf16", torch.device("cpu"))
    ('fp32', 'bf16')
    """
    if setting != "auto":
        return setting
    return "bf16" if where.type == "cuda" else "fp32"


def init_from_env(timeout_s: float = 1800.0) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE set, also to 1: `--nproc_per_node 1`
    runs the FSDP2 path on one rank); False when not launched by torchrun.

    Backend: nccl on GPUs, gloo on CPUs.
    """
    if "WORLD_SIZE" not in os.environ or (dist.is_available() and dist.is_initialized()):
        return is_distributed()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(device())
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard_bounds(n: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """[start, end) of rank's contiguous share of n items; shares differ by at most one.

    >>> [shard_bounds(5, r, 2) for r in range(2)]
    [(0, 3), (3, 5)]
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def shard(items: Sequence[T] | torch.Tensor) -> Any:
    """This rank's contiguous share of a list or of a tensor's first dimension."""
    start, end = shard_bounds(len(items))
    return items[start:end]


def _reduce(value: float, op: Any) -> float:
    if not is_distributed():
        return value
    t = torch.tensor(value, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=op)
    return float(t)


def all_reduce_sum(value: float) -> float:
    return _reduce(value, dist.ReduceOp.SUM) if is_distributed() else value


def all_reduce_max(value: float) -> float:
    return _reduce(value, dist.ReduceOp.MAX) if is_distributed() else value


def all_true(flag: bool) -> bool:
    """True when `flag` is true on every rank."""
    return _reduce(1.0 if flag else 0.0, dist.ReduceOp.MIN) > 0.5 if is_distributed() else flag


def all_gather_objects(obj: T) -> list[T]:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects; CPU tensors)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def shard_map(fn: Callable[..., list[T]], *lists: Sequence[Any]) -> list[T]:
    """fn(*shares) on this rank's share of each list, then every rank's results concatenated:
    the same list as fn(*lists), computed world_size times faster."""
    if not is_distributed():
        return fn(*lists)
    start, end = shard_bounds(len(lists[0]))
    part = fn(*[x[start:end] for x in lists]) if end > start else []
    return [item for chunk in all_gather_objects(part) for item in chunk]


def micro_batches(index: torch.Tensor, size: int, fallback: torch.Tensor | None = None
                  ) -> list[tuple[torch.Tensor, float]]:
    """(micro-batch index, weight) pairs: `index` [n] split in chunks of `size` (weight 1), then
    padded with weight-0 chunks so that every rank runs the same number of forward/backward
    passes (FSDP gathers and reduces parameters inside each one; unequal counts would hang).

    A weight-0 chunk reruns `fallback` (default: the first row of `index`, or row 0) and must
    contribute loss * 0: an exact zero gradient.
    """
    chunks = list(index.split(size)) if len(index) and size > 0 else []
    if size <= 0 and len(index):
        chunks = [index]
    count = int(all_reduce_max(float(len(chunks))))
    empty = torch.zeros(1, dtype=torch.long, device="cpu")
    dummy = fallback if fallback is not None else (index[:1] if len(index) else empty)
    return [(c, 1.0) for c in chunks] + [(dummy, 0.0)] * (count - len(chunks))


def _comm_device() -> torch.device:
    return device() if dist.get_backend() == "nccl" else torch.device("cpu")


def run_dir(cfg: Any, tensorboard: bool = True) -> Any:
    """The stage's RunDir (report/run_dir.py `open_run`): every rank checks the run-directory
    contract (so that all refuse alike), then they wait for each other before anything is
    written; rank 0 writes, the others get one that writes nothing (same `.path`)."""
    from openk1.report.run_dir import open_run

    opened = open_run(cfg, tensorboard=tensorboard, writes=is_main())
    if is_distributed():
        dist.barrier()
    return opened
