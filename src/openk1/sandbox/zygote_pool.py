"""The scorer's side of mode "zygote": long-lived bwraps running zygote.py, and runs through them.

A `_Zygote` is one bwrap running zygote.py's source, driven over a SOCK_SEQPACKET socket pair;
`_ZygotePool` keeps the idle ones per Sandbox configuration; `run_in_zygote` sends one request
and reads the program's output under the wall-clock and output caps. On a timeout, an output
overflow or any protocol error the whole zygote is SIGKILLed (its PID namespace takes the run
with it) and a later run starts a new one.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import signal
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openk1.sandbox.bwrap import NOBODY, SandboxUnavailable
from openk1.sandbox.execute import ExecResult, as_bytes, exec_result, memfd, read_capped
from openk1.sandbox.limits import Limits, rlimits

if TYPE_CHECKING:
    from openk1.sandbox.box import Sandbox

ZYGOTE_MAX_FDS = 253  # SCM_RIGHTS: stdin, stdout, stderr and one memfd per file
ZYGOTE_START_S = 30.0  # longest wait for a zygote to start, or for its reply after a run


@functools.cache
def zygote_source() -> str:
    """zygote.py's text, run with `python -I -S -c` inside bwrap (never imported here)."""
    return Path(__file__).with_name("zygote.py").read_text()


class _Zygote:
    """One long-lived bwrap running zygote.py, driven over a SOCK_SEQPACKET socket pair."""

    def __init__(self, argv: list[str], drop_to_nobody: bool) -> None:
        self.sent_at = time.monotonic()
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.log = os.memfd_create("zygote-stderr")
        try:
            self.proc = subprocess.Popen(
                [*argv, str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self.log,
                pass_fds=[theirs.fileno()],
                env={},
                start_new_session=True,
                user=NOBODY if drop_to_nobody else None,
                group=NOBODY if drop_to_nobody else None,
                extra_groups=[] if drop_to_nobody else None,
            )
        finally:
            theirs.close()

    def wait_ready(self) -> None:
        """Wait for the zygote's start, so that no run's wall clock pays for it."""
        ready, problem = self._receive(ZYGOTE_START_S)
        if problem is not None or "ready" not in ready:
            self.kill()
            raise SandboxUnavailable(f"sandbox zygote did not start: {problem or ready}")

    def _receive(self, timeout_s: float) -> tuple[dict[str, Any], str | None]:
        """The zygote's next message, or ({}, what went wrong)."""
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(1 << 20)
        except OSError as exc:
            return {}, f"no reply ({exc}): {self._log_tail()}"
        if not data:
            return {}, f"zygote exited: {self._log_tail()}"
        answer: dict[str, Any] = json.loads(data)
        return answer, None

    def send(self, request: bytes, fds: list[int]) -> None:
        self.sent_at = time.monotonic()
        socket.send_fds(self.sock, [request], fds)

    def reply(self) -> tuple[int, str | None]:
        """(exit code, None) once the run is over, or (-1, what went wrong)."""
        answer, problem = self._receive(ZYGOTE_START_S)
        if problem is not None or "code" not in answer:
            return -1, problem or str(answer.get("error"))
        return int(answer["code"]), None

    def _log_tail(self) -> str:
        size = os.fstat(self.log).st_size
        return os.pread(self.log, 4000, max(0, size - 4000)).decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL the bwrap's process group; its PID namespace takes every run with it."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.sock.close()
        os.close(self.log)


class _ZygotePool:
    """Idle zygotes per Sandbox configuration (equal Sandboxes share them): a run takes one or
    starts one, and gives it back only after a clean end, so there are as many as concurrent
    runs. A forked scorer process starts its own instead of sharing its parent's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[Sandbox, list[_Zygote]] = {}
        self._pid = os.getpid()
        self._spawner: ThreadPoolExecutor | None = None

    def _spawn(self, box: Sandbox) -> _Zygote:
        """Start a zygote from one long-lived thread: bwrap's --die-with-parent fires when the
        *thread* that forked it ends, so a pool worker thread must not be its parent."""
        with self._lock:
            if self._spawner is None:
                self._spawner = ThreadPoolExecutor(1, thread_name_prefix="sandbox-zygotes")
            spawner = self._spawner
        zygote = spawner.submit(_Zygote, box._zygote_argv(), os.geteuid() == 0).result()
        zygote.wait_ready()
        return zygote

    def start(self, box: Sandbox, request: bytes, fds: list[int]) -> _Zygote:
        """Send `request` to an idle zygote (a new one if none, or if the idle one is dead)."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child: those belong to the parent
                self._idle, self._pid, self._spawner = {}, os.getpid(), None
            idle = self._idle.get(box, [])
            zygote = idle.pop() if idle else None
        if zygote is not None:
            try:
                zygote.send(request, fds)
                return zygote
            except OSError:
                zygote.kill()
        zygote = self._spawn(box)
        try:
            zygote.send(request, fds)
        except BaseException:
            zygote.kill()
            raise
        return zygote

    def release(self, box: Sandbox, zygote: _Zygote) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._idle.setdefault(box, []).append(zygote)
                return
        zygote.kill()

    def close(self) -> None:
        with self._lock:
            zygotes = [z for idle in self._idle.values() for z in idle]
            self._idle = {}
        for zygote in zygotes:
            zygote.kill()


_ZYGOTES = _ZygotePool()
atexit.register(_ZYGOTES.close)


def zygote_request(
    cmd: Sequence[str],
    env: dict[str, str],
    files: Mapping[str, object],
    executable: set[str],
    limits: Limits,
) -> bytes:
    """The JSON request zygote.py reads: argv, environment, (name, mode) of each attached
    file, rlimits and /tmp's size."""
    request = {
        "argv": list(cmd),
        "env": env,
        "files": [[name, 0o755 if name in executable else 0o644] for name in files],
        "rlimits": rlimits(limits),
        "tmpfs_bytes": limits.tmpfs_mb << 20,
    }
    return json.dumps(request).encode()


def run_in_zygote(
    box: Sandbox, request: bytes, fds: list[int], stdin: str | bytes, limits: Limits
) -> ExecResult:
    """Run `request` (with file memfds `fds`) in an idle zygote of `box`; the wall clock starts
    when the request is sent. Called from `Sandbox._run_zygote`: warnings point past it."""
    stdin_fd = memfd("stdin", as_bytes(stdin))
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        try:
            zygote = _ZYGOTES.start(box, request, [stdin_fd, out_w, err_w, *fds])
        finally:
            for fd in (stdin_fd, out_w, err_w):
                os.close(fd)
        start = zygote.sent_at  # the wall clock starts at the request, not a zygote's start
        out, err, timed_out, overflow = read_capped(
            out_r, err_r, zygote.sock.fileno(), start + limits.wall_s, limits.output_bytes
        )
    finally:
        os.close(out_r)
        os.close(err_r)
    if timed_out or overflow:
        zygote.kill()  # takes the program's namespaces with it
        code = 128 + signal.SIGKILL
    else:
        code, problem = zygote.reply()
        if problem is None:
            _ZYGOTES.release(box, zygote)
        else:
            zygote.kill()
            warnings.warn(f"sandbox zygote failed: {problem}", RuntimeWarning, stacklevel=4)
            err += f"\nsandbox: zygote failed: {problem}".encode()
    wall = time.monotonic() - start
    return exec_result(code, timed_out, overflow, wall, out, err, limits)
