"""Per-run resource limits: `Limits`, and the two forms the program's rlimits take.

The parent enforces `wall_s` and `output_bytes` (see execute.py); the rest are rlimits set
inside the sandbox just before exec, so they bind the program, not bwrap or the zygote:
`prlimit_argv` for one bwrap per run, `rlimits` for the zygote's setrlimit calls.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Per-run limits. cpu_s/memory_mb/processes/file_size_mb are rlimits of the program."""

    wall_s: float = 5.0
    cpu_s: float = 2.0
    memory_mb: int = 512  # RLIMIT_AS (virtual address space)
    processes: int = 8  # RLIMIT_NPROC (tasks, threads included) inside its own user namespace
    file_size_mb: int = 16  # RLIMIT_FSIZE: largest file it may write
    tmpfs_mb: int = 64  # total size of the writable /tmp
    output_bytes: int = 1 << 20  # cap on stdout, and separately on stderr


DEFAULT_LIMITS = Limits()  # the default of every `limits` argument (frozen, so safe to share)


def cpu_seconds(limits: Limits) -> int:
    """RLIMIT_CPU's soft limit: whole seconds, rounded up, at least 1 (the hard one is +1)."""
    return max(1, int(limits.cpu_s + 0.999))


def prlimit_argv(limits: Limits, with_nproc: bool = True) -> list[str]:
    """Limits set inside the sandbox, just before exec: they bind the program, not bwrap."""
    cpu = cpu_seconds(limits)
    argv = [
        "prlimit",
        f"--cpu={cpu}:{cpu + 1}",
        f"--as={limits.memory_mb << 20}",
        f"--fsize={limits.file_size_mb << 20}",
        "--core=0",
    ]
    if with_nproc:
        argv.append(f"--nproc={limits.processes}")
    return argv + ["--"]


def rlimits(limits: Limits) -> list[tuple[int, int, int]]:
    """The same limits as `prlimit_argv`, as (resource, soft, hard) for the zygote."""
    cpu = cpu_seconds(limits)
    memory, fsize = limits.memory_mb << 20, limits.file_size_mb << 20
    return [
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, memory, memory),
        (resource.RLIMIT_FSIZE, fsize, fsize),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NPROC, limits.processes, limits.processes),
    ]
