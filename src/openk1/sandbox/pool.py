"""Many sandboxed runs in parallel: `Job` (one run) and `SandboxPool` (threads; the work
happens in the sandboxes' subprocesses, and each concurrent run gets a zygote of its own)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Self

from openk1.sandbox.box import Sandbox
from openk1.sandbox.execute import ExecResult
from openk1.sandbox.limits import DEFAULT_LIMITS, Limits


@dataclass(frozen=True)
class Job:
    """One run for SandboxPool.map."""

    files: Mapping[str, str | bytes]
    cmd: Sequence[str]
    stdin: str | bytes = ""
    limits: Limits = DEFAULT_LIMITS
    executable: tuple[str, ...] = ()


class SandboxPool:
    """Runs many sandboxed programs in parallel (threads; the work happens in subprocesses).

    >>> with SandboxPool(workers=2) as pool:                     # doctest: +SKIP
    ...     results = pool.map([Job({"a.py": "print(1)"}, pool.sandbox.python_argv("a.py"))])
    """

    def __init__(self, workers: int = 2, sandbox: Sandbox | None = None) -> None:
        self.sandbox = sandbox if sandbox is not None else Sandbox()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox")

    def submit(self, job: Job) -> Future[ExecResult]:
        box = self.sandbox
        return self._executor.submit(
            box.run, job.files, job.cmd, job.stdin, job.limits, job.executable
        )

    def map(self, jobs: Iterable[Job]) -> list[ExecResult]:
        """Results in the order of `jobs`."""
        return [future.result() for future in [self.submit(job) for job in jobs]]

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
