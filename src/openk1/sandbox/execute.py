"""One process run under the limits its parent enforces, and the outcome of a run.

Files and stdin enter as in-memory files (memfds); stdout and stderr are read up to a cap until
the program's end or the wall-clock deadline; at the end the whole process group is SIGKILLed;
`classify` turns exit code, timeout and overflow into a status: OK | TLE | MLE | RE | OLE.
`run_unsandboxed` is the rlimits-only run for machines without bubblewrap (opt-in, warned).
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from openk1.sandbox.bwrap import INSTALL_HINT, NOBODY
from openk1.sandbox.limits import Limits, prlimit_argv

OK, TLE, MLE, RE, OLE = "OK", "TLE", "MLE", "RE", "OLE"
STATUSES: tuple[str, ...] = (OK, TLE, MLE, RE, OLE)
MLE_MARKERS: tuple[str, ...] = ("MemoryError", "std::bad_alloc", "Cannot allocate memory")
READ_CHUNK = 1 << 16


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one run. status: OK | TLE | MLE | RE | OLE; exit_code is 128+n for signal n."""

    status: str
    stdout: str
    stderr: str
    exit_code: int
    wall_s: float
    raw_stdout: bytes = field(default=b"", repr=False)

    @property
    def ok(self) -> bool:
        return self.status == OK


def memfd(name: str, data: bytes) -> int:
    """An anonymous in-memory file holding `data`, positioned at its start (bwrap copies it in)."""
    fd = os.memfd_create(re.sub(r"[^\w.-]", "_", name)[:200] or "file")
    view, written = memoryview(data), 0
    while written < len(data):
        written += os.write(fd, view[written:])
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def as_bytes(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else data


def read_capped(
    out_fd: int, err_fd: int, done_fd: int, deadline: float, cap: int
) -> tuple[bytes, bytes, bool, bool]:
    """Read stdout/stderr until both close and `done_fd` (a pidfd, or the zygote's socket)
    turns readable, the deadline passes, or one stream exceeds `cap` bytes.
    Returns (stdout, stderr, timed_out, overflow)."""
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    sel = selectors.DefaultSelector()
    for fd in (out_fd, err_fd, done_fd):
        if fd != done_fd:
            os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    timed_out = overflow = False
    try:
        while sel.get_map() and not (timed_out or overflow):
            remaining = deadline - time.monotonic()
            timed_out = remaining <= 0
            for key, _ in [] if timed_out else sel.select(remaining):
                chunk = b"" if key.fd == done_fd else os.read(key.fd, READ_CHUNK)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                bufs[key.fd] += chunk
                overflow = overflow or len(bufs[key.fd]) > cap
    finally:
        sel.close()
    return bytes(bufs[out_fd][:cap]), bytes(bufs[err_fd][:cap]), timed_out, overflow


def kill_and_reap(proc: subprocess.Popen[bytes]) -> int:
    """SIGKILL the whole process group (the leader is not reaped yet, so its pgid cannot have
    been reused) and reap the leader; bwrap's PID namespace takes every other descendant.
    Returns the exit code, 128+n for signal n."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    code = proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return code if code >= 0 else 128 - code


def classify(
    code: int, timed_out: bool, overflow: bool, wall_s: float, stderr: str, limits: Limits
) -> str:
    """OLE > TLE (wall limit, SIGXCPU, or SIGKILL by the hard CPU limit) > OK > MLE > RE."""
    cpu_killed = code == 128 + signal.SIGKILL and wall_s >= limits.cpu_s
    if overflow:
        return OLE
    if timed_out or code == 128 + signal.SIGXCPU or cpu_killed:
        return TLE
    if code == 0:
        return OK
    if any(marker in stderr for marker in MLE_MARKERS):
        return MLE
    return RE


def exec_result(
    code: int,
    timed_out: bool,
    overflow: bool,
    wall_s: float,
    out: bytes,
    err: bytes,
    limits: Limits,
) -> ExecResult:
    """The ExecResult of a finished run: decoded streams and the status `classify` gives."""
    stderr = err.decode(errors="replace")
    status = classify(code, timed_out, overflow, wall_s, stderr, limits)
    return ExecResult(status, out.decode(errors="replace"), stderr, code, wall_s, out)


def execute(
    argv: list[str],
    stdin_fd: int,
    pass_fds: list[int],
    env: dict[str, str],
    limits: Limits,
    drop_to_nobody: bool,
    cwd: str | None = None,
) -> ExecResult:
    """Spawn argv in its own process group; enforce wall time and output cap; kill all."""
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=stdin_fd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=pass_fds,
        env=env,
        cwd=cwd,
        start_new_session=True,
        user=NOBODY if drop_to_nobody else None,
        group=NOBODY if drop_to_nobody else None,
        extra_groups=[] if drop_to_nobody else None,
    )
    assert proc.stdout is not None and proc.stderr is not None
    pidfd = os.pidfd_open(proc.pid)  # readable once the process has exited
    try:
        out, err, timed_out, overflow = read_capped(
            proc.stdout.fileno(),
            proc.stderr.fileno(),
            pidfd,
            start + limits.wall_s,
            limits.output_bytes,
        )
    finally:
        os.close(pidfd)
        code = kill_and_reap(proc)
    wall = time.monotonic() - start
    return exec_result(code, timed_out, overflow, wall, out, err, limits)


def run_unsandboxed(
    files: Mapping[str, str | bytes],
    cmd: Sequence[str],
    stdin: str | bytes,
    limits: Limits,
    executable: set[str],
    env: dict[str, str],
) -> ExecResult:
    """Run `cmd` with rlimits only, in a temporary host directory holding `files`; warns on
    every call (called straight from `Sandbox.run`, so the warning points at its caller)."""
    warnings.warn(
        f"running untrusted code WITHOUT a sandbox (allow_unsandboxed=True); {INSTALL_HINT}",
        RuntimeWarning,
        stacklevel=3,
    )
    with tempfile.TemporaryDirectory(prefix="openk1-unsandboxed-") as tmp:
        for name, data in files.items():
            path = os.path.join(tmp, name)
            with open(path, "wb") as f:
                f.write(as_bytes(data))
            os.chmod(path, 0o755 if name in executable else 0o644)
        argv = prlimit_argv(limits, with_nproc=False) + list(cmd)
        stdin_fd = memfd("stdin", as_bytes(stdin))
        try:
            return execute(argv, stdin_fd, [], env, limits, False, cwd=tmp)
        finally:
            os.close(stdin_fd)
