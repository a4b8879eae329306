"""Run a function on N gloo ranks bound to 127.0.0.1 (the tests' stand-in for torchrun)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world), GLOO_SOCKET_IFNAME="lo",
                      OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    import torch

    torch.set_num_threads(1)
    from openk1.distributed import runtime

    assert runtime.init_from_env(timeout_s=120)
    try:
        fn(rank, *args)
    finally:
        runtime.shutdown()


def run_ranks(fn: Callable[..., Any], world: int, *args: Any) -> None:
    """fn(rank, *args) on `world` spawned processes; raises if any of them fails."""
    mp.start_processes(_entry, args=(world, free_port(), fn, args), nprocs=world,
                       join=True, start_method="spawn")
