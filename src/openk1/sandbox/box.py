"""`Sandbox`: how runs are isolated, and `Sandbox.run`, which picks the way a run is started.

A run goes through an idle zygote (zygote_pool.py) by default, or one bwrap of its own
(mode="per_run", or where the zygote cannot start); without bwrap it is refused unless
`allow_unsandboxed`. A Sandbox is probed once (`python -c pass` in a per-run bwrap) when made.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from openk1.sandbox.bwrap import (
    INSTALL_HINT,
    SANDBOX_PATH,
    WORKDIR,
    SandboxUnavailable,
    env_args,
    file_args,
    find_bwrap,
    sandbox_argv,
)
from openk1.sandbox.execute import RE, ExecResult, as_bytes, execute, memfd, run_unsandboxed
from openk1.sandbox.limits import DEFAULT_LIMITS, Limits, prlimit_argv
from openk1.sandbox.modules import PYLIB_DIR, default_python, python_binds
from openk1.sandbox.zygote_pool import (
    ZYGOTE_MAX_FDS,
    run_in_zygote,
    zygote_request,
    zygote_source,
)

ZYGOTE: Final = "zygote"  # Sandbox.mode values
PER_RUN: Final = "per_run"
FILE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@functools.cache
def _probe(box: Sandbox) -> None:
    """Run `python -c pass` in a per-run sandbox once; raise SandboxUnavailable with the reason
    if it fails (no user namespaces, or an interpreter the sandbox user cannot read)."""
    result = box._run_per_run({}, [], set(), box.python_argv("-c", "pass"), "", Limits())
    if not result.ok:
        raise SandboxUnavailable(
            f"cannot run {box.python} in a bwrap sandbox here (exit {result.exit_code}): "
            f"{result.stderr.strip()[-500:]}"
        )


@functools.cache
def _zygote_works(box: Sandbox) -> bool:
    """Run `python -c pass` through a zygote once; where that fails (e.g. nested user
    namespaces refused), warn and let `box` fall back to one bwrap per run."""
    try:
        result = box._run_zygote({}, [], set(), box.python_argv("-c", "pass"), "", Limits())
    except SandboxUnavailable as exc:
        result = ExecResult(RE, "", str(exc), -1, 0.0)
    if not result.ok:
        warnings.warn(
            "sandbox zygote unusable here, falling back to one bwrap per run (slower, same "
            f"isolation): exit {result.exit_code}: {result.stderr.strip()[-500:]}",
            RuntimeWarning,
            stacklevel=2,
        )
    return result.ok


@dataclass(frozen=True)
class Sandbox:
    """How runs are isolated. Thread-safe: one Sandbox can serve a whole SandboxPool.

    python: interpreter used by `python_argv` (read-only bound when outside /usr).
    python_modules: host package dirs/files bound read-only under /opt/pylib (on PYTHONPATH).
    allow_unsandboxed: where bwrap is missing, run with rlimits only (and warn on every run).
    mode: "zygote" (default) starts each program from a long-lived bwrap per concurrent run,
      in fresh user/mount/PID/IPC/UTS/cgroup namespaces; "per_run" starts one bwrap per program
      (also a fresh network namespace). See the package docstring for what differs.
    """

    python: str = field(default_factory=default_python)
    python_modules: tuple[str, ...] = ()
    allow_unsandboxed: bool = False
    bwrap: str | None = field(default_factory=find_bwrap)
    mode: Literal["zygote", "per_run"] = ZYGOTE

    def __post_init__(self) -> None:
        if self.mode not in (ZYGOTE, PER_RUN):
            raise ValueError(f"Sandbox mode must be {ZYGOTE!r} or {PER_RUN!r}, got {self.mode!r}")
        if self.bwrap is None and not self.allow_unsandboxed:
            raise SandboxUnavailable(INSTALL_HINT)
        if self.bwrap is not None:
            _probe(self)

    def python_argv(self, *args: str) -> list[str]:
        """argv that runs Python on `args` (no user site-packages)."""
        return [self.python, "-s", *args]

    def run(
        self,
        files: Mapping[str, str | bytes],
        cmd: Sequence[str],
        stdin: str | bytes = "",
        limits: Limits = DEFAULT_LIMITS,
        executable: Iterable[str] = (),
    ) -> ExecResult:
        """Write `files` (name -> content) into a fresh /tmp, run `cmd` there on `stdin`."""
        bad = [name for name in files if not FILE_NAME_RE.fullmatch(name)]
        if bad:
            raise ValueError(f"sandbox file names must be plain names, got {bad}")
        if self.bwrap is None:
            env = self._unsandboxed_env()
            return run_unsandboxed(files, cmd, stdin, limits, set(executable), env)
        fds = [memfd(name, as_bytes(data)) for name, data in files.items()]
        try:
            use_zygote = (
                self.mode == ZYGOTE and len(fds) + 3 <= ZYGOTE_MAX_FDS and _zygote_works(self)
            )
            run = self._run_zygote if use_zygote else self._run_per_run
            return run(files, fds, set(executable), cmd, stdin, limits)
        finally:
            for fd in fds:
                os.close(fd)

    def _run_per_run(
        self,
        files: Mapping[str, object],
        fds: list[int],
        executable: set[str],
        cmd: Sequence[str],
        stdin: str | bytes,
        limits: Limits,
    ) -> ExecResult:
        stdin_fd = memfd("stdin", as_bytes(stdin))
        try:
            argv = self._bwrap_argv(files, fds, executable, limits) + list(cmd)
            return execute(argv, stdin_fd, fds, self._env(), limits, os.geteuid() == 0)
        finally:
            os.close(stdin_fd)

    def _run_zygote(
        self,
        files: Mapping[str, object],
        fds: list[int],
        executable: set[str],
        cmd: Sequence[str],
        stdin: str | bytes,
        limits: Limits,
    ) -> ExecResult:
        request = zygote_request(cmd, self._env(), files, executable, limits)
        return run_in_zygote(self, request, fds, stdin, limits)

    def _bwrap_argv(
        self, files: Mapping[str, object], fds: list[int], executable: set[str], limits: Limits
    ) -> list[str]:
        assert self.bwrap is not None
        binds = python_binds(self.python, self.python_modules)
        argv = sandbox_argv(self.bwrap, limits.tmpfs_mb, binds)
        argv += file_args(files, fds, executable) + env_args(self._env())
        return argv + ["--", *prlimit_argv(limits)]

    def _zygote_argv(self) -> list[str]:
        """The long-lived bwrap a zygote runs in: the per-run namespaces and filesystem, but no
        files, limits or environment of any program (each request brings its own)."""
        assert self.bwrap is not None
        argv = sandbox_argv(self.bwrap, 1, python_binds(self.python, self.python_modules))
        argv += env_args({"PATH": SANDBOX_PATH})
        return argv + ["--", self.python, "-I", "-S", "-c", zygote_source()]

    def _env(self) -> dict[str, str]:
        env = {
            "PATH": SANDBOX_PATH,
            "HOME": WORKDIR,
            "TMPDIR": WORKDIR,
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONIOENCODING": "utf-8",
        }
        if self.python_modules:
            env["PYTHONPATH"] = PYLIB_DIR
        return env

    def _unsandboxed_env(self) -> dict[str, str]:
        """`_env` with PYTHONPATH pointing at the host dirs holding `python_modules`."""
        env = self._env()
        if self.python_modules:
            env["PYTHONPATH"] = os.pathsep.join(os.path.dirname(p) for p in self.python_modules)
        return env


def run(
    files: Mapping[str, str | bytes],
    cmd: Sequence[str],
    stdin: str | bytes = "",
    limits: Limits = DEFAULT_LIMITS,
    *,
    allow_unsandboxed: bool = False,
) -> ExecResult:
    """Run `cmd` on `stdin` in a fresh default Sandbox holding `files`."""
    return Sandbox(allow_unsandboxed=allow_unsandboxed).run(files, cmd, stdin, limits)
