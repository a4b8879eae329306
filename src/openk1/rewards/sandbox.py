"""Run untrusted programs inside bubblewrap (`bwrap`): the code-reward sandbox.

Guarantees of every run, in both modes: no network (an empty network namespace: loopback
only); its own PID namespace (/proc shows only the run's processes; it cannot signal or ptrace
anything outside); its own IPC, UTS and cgroup namespaces and a user namespace in which the
program has no capabilities (uid 1000 inside; `nobody` on the host when the scorer is root, so
RLIMIT_NPROC applies); a read-only root made of binds of the system directories (no view of
the host's home, project or /tmp); a fresh private size-capped tmpfs at /tmp as the working
directory (files are copied in from memory, never from a host path) and a fresh /dev/shm; an
empty environment (only what `_env` sets); rlimits on CPU seconds, address space, processes,
file size and core size; a wall-clock limit and an output cap enforced by the parent; and at
the end every process it started is killed: the run's PID namespace dies with its init.

mode="zygote" (the default): a bwrap started once per concurrently running program (a pool of
2 workers keeps 2) runs zygote.py, which starts each program in a new user, mount, PID, IPC,
UTS and cgroup namespace nested in that sandbox; see zygote.py for the steps. It answers only
once the run's PID namespace is empty, and takes the next run only then, so nothing a program
leaves (files in /tmp or /dev/shm, SysV IPC objects, background processes) reaches the next
one; on a timeout, an output overflow or any protocol error the whole zygote is SIGKILLed and
replaced. Differences from per_run: consecutive runs of one zygote share its (empty) network
namespace, which they cannot configure (it belongs to an ancestor user namespace) and where
nothing of theirs outlives them; the program's init (PID 1) is a fork of the zygote (no
capabilities, non-dumpable, no signal handlers) rather than bwrap's; rlimits are set by that
fork instead of by exec'ing `prlimit`. Where the zygote cannot start (e.g. nested user
namespaces refused) the Sandbox warns once and runs per_run.

mode="per_run": one bwrap per program (`--unshare-all`, a fresh network namespace each time)
with limits applied by `prlimit` inside it; the parent SIGKILLs bwrap's process group at the
end and the PID namespace takes every descendant with it.

Cost (benchmarks/sandbox_overhead.py, `print(1)`): bwrap's set-up and tear-down of a full set
of namespaces and a dozen mounts, the `prlimit` exec, and a full fork of the scorer (Popen can
not use vfork when switching to `nobody`) made per_run about 2.5x a bare subprocess; a zygote
run costs a few forks of a small Python process, a handful of mounts and no exec besides the
program's, about 1.5x.

Departure from the report: Kimi's sandbox is a crun container service on reused cgroups; this
is bwrap with the same isolation goals and no system daemon (the zygotes are the scorer's own
children and exit with it).

>>> box = Sandbox()
>>> box.run({"main.py": "print(input()[::-1])"}, box.python_argv("main.py"), "abc").stdout
'cba\\n'
"""

from __future__ import annotations

import atexit
import functools
import importlib.machinery
import importlib.util
import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Self

OK, TLE, MLE, RE, OLE = "OK", "TLE", "MLE", "RE", "OLE"
STATUSES: tuple[str, ...] = (OK, TLE, MLE, RE, OLE)

WORKDIR = "/tmp"
PYLIB_DIR = "/opt/pylib"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
INNER_UID = 1000  # the program's uid inside its user namespace
NOBODY = 65534  # host uid/gid bwrap runs as when the scorer is root
INSTALL_HINT = "bubblewrap (bwrap) is required to run untrusted code: apt-get install bubblewrap"
SYSTEM_PATHS: tuple[str, ...] = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
)
MLE_MARKERS: tuple[str, ...] = ("MemoryError", "std::bad_alloc", "Cannot allocate memory")
READ_CHUNK = 1 << 16
ZYGOTE: Final = "zygote"  # Sandbox.mode values
PER_RUN: Final = "per_run"
ZYGOTE_MAX_FDS = 253  # SCM_RIGHTS: stdin, stdout, stderr and one memfd per file
ZYGOTE_START_S = 30.0  # longest wait for a zygote to start, or for its reply after a run
FILE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class SandboxUnavailable(RuntimeError):
    """bwrap is missing or cannot create its namespaces on this machine."""


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


def default_python() -> str:
    """The interpreter programs run under: Debian's /usr/bin/python3 when present, as it needs
    nothing outside /usr; otherwise the scorer's own base interpreter."""
    if os.path.exists("/usr/bin/python3"):
        return "/usr/bin/python3"
    return os.path.realpath(os.path.join(sys.base_prefix, "bin", "python3"))


def module_paths(names: Iterable[str]) -> tuple[str, ...]:
    """Host paths (package dirs or single-module files) of the importable top-level modules
    `names`, to bind read-only into the sandbox with `Sandbox(python_modules=...)`."""
    paths = []
    for name in names:
        spec = module_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"{name} is not importable here; pip install it")
        is_pkg = spec.submodule_search_locations is not None
        paths.append(_readable_by_all(os.path.dirname(spec.origin) if is_pkg else spec.origin))
    return tuple(paths)


def module_spec(name: str) -> importlib.machinery.ModuleSpec | None:
    """importlib's spec of top-level module `name`, or None where it has none on disk: find_spec
    raises ValueError for a module already in sys.modules without a spec (Ray's import registers
    such a `colorful`), which has no path to bind."""
    try:
        return importlib.util.find_spec(name)
    except ValueError:
        return None


def _readable_by_all(path: str) -> str:
    """`path`, or a copy of it in a world-readable cache when the sandbox user (nobody) could
    not reach it, e.g. a virtualenv inside a 0700 folder such as a fresh `mktemp -d` clone."""
    import hashlib
    import shutil
    import stat
    import tempfile

    parts = [path, *(str(p) for p in Path(path).parents)]
    if all(os.stat(p).st_mode & stat.S_IXOTH for p in parts if os.path.isdir(p)):
        return path
    digest = hashlib.sha256(f"{path}:{os.stat(path).st_mtime_ns}".encode()).hexdigest()[:16]
    target = (
        Path(tempfile.gettempdir()) / f"openk1-sandbox-modules-{digest}" / os.path.basename(path)
    )
    if not target.exists():
        tmp = Path(tempfile.mkdtemp(prefix=".copy-", dir=Path(tempfile.gettempdir())))
        copy = tmp / os.path.basename(path)
        (shutil.copytree if os.path.isdir(path) else shutil.copy2)(path, copy)
        for p in [tmp, *tmp.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(target.parent, 0o755)
        os.replace(copy, target)
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


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


def _namespace_args() -> list[str]:
    return [
        "--unshare-all",
        "--unshare-user",
        "--uid",
        str(INNER_UID),
        "--gid",
        str(INNER_UID),
        "--hostname",
        "sandbox",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
    ]


def _fs_args(tmpfs_mb: int, extra_ro: Sequence[tuple[str, str]]) -> list[str]:
    """Read-only system dirs, /proc of the new PID namespace, a minimal /dev, a private /tmp."""
    args: list[str] = []
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.exists(path):
            args += ["--ro-bind", path, path]
    for src, dest in extra_ro:
        args += ["--ro-bind", src, dest]
    size = str(tmpfs_mb << 20)
    args += ["--proc", "/proc", "--dev", "/dev", "--size", "1048576", "--tmpfs", "/dev/shm"]
    args += ["--size", size, "--tmpfs", WORKDIR, "--remount-ro", "/", "--chdir", WORKDIR]
    return args


def _prlimit_argv(limits: Limits, with_nproc: bool = True) -> list[str]:
    """Limits set inside the sandbox, just before exec: they bind the program, not bwrap."""
    cpu = max(1, int(limits.cpu_s + 0.999))
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


def _rlimits(limits: Limits) -> list[tuple[int, int, int]]:
    """The same limits as `_prlimit_argv`, as (resource, soft, hard) for the zygote."""
    cpu = max(1, int(limits.cpu_s + 0.999))
    memory, fsize = limits.memory_mb << 20, limits.file_size_mb << 20
    return [
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, memory, memory),
        (resource.RLIMIT_FSIZE, fsize, fsize),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NPROC, limits.processes, limits.processes),
    ]


def _memfd(name: str, data: bytes) -> int:
    """An anonymous in-memory file holding `data`, positioned at its start (bwrap copies it in)."""
    fd = os.memfd_create(re.sub(r"[^\w.-]", "_", name)[:200] or "file")
    view, written = memoryview(data), 0
    while written < len(data):
        written += os.write(fd, view[written:])
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _read_capped(
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


def _kill_and_reap(proc: subprocess.Popen[bytes]) -> int:
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


def _classify(
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


@dataclass(frozen=True)
class Sandbox:
    """How runs are isolated. Thread-safe: one Sandbox can serve a whole SandboxPool.

    python: interpreter used by `python_argv` (read-only bound when outside /usr).
    python_modules: host package dirs/files bound read-only under /opt/pylib (on PYTHONPATH).
    allow_unsandboxed: where bwrap is missing, run with rlimits only (and warn on every run).
    mode: "zygote" (default) starts each program from a long-lived bwrap per concurrent run,
      in fresh user/mount/PID/IPC/UTS/cgroup namespaces; "per_run" starts one bwrap per program
      (also a fresh network namespace). See the module docstring for what differs.
    """

    python: str = field(default_factory=default_python)
    python_modules: tuple[str, ...] = ()
    allow_unsandboxed: bool = False
    bwrap: str | None = field(default_factory=lambda: shutil.which("bwrap"))
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
        limits: Limits = Limits(),
        executable: Iterable[str] = (),
    ) -> ExecResult:
        """Write `files` (name -> content) into a fresh /tmp, run `cmd` there on `stdin`."""
        bad = [name for name in files if not FILE_NAME_RE.fullmatch(name)]
        if bad:
            raise ValueError(f"sandbox file names must be plain names, got {bad}")
        if self.bwrap is None:
            return self._run_unsandboxed(files, cmd, stdin, limits, set(executable))
        fds = [_memfd(name, _as_bytes(data)) for name, data in files.items()]
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
        stdin_fd = _memfd("stdin", _as_bytes(stdin))
        try:
            argv = self._bwrap_argv(files, fds, executable, limits) + list(cmd)
            return _execute(argv, stdin_fd, fds, self._env(), limits, os.geteuid() == 0)
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
        request = {
            "argv": list(cmd),
            "env": self._env(),
            "files": [[name, 0o755 if name in executable else 0o644] for name in files],
            "rlimits": _rlimits(limits),
            "tmpfs_bytes": limits.tmpfs_mb << 20,
        }
        stdin_fd = _memfd("stdin", _as_bytes(stdin))
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            try:
                zygote = _ZYGOTES.start(
                    self, json.dumps(request).encode(), [stdin_fd, out_w, err_w, *fds]
                )
            finally:
                for fd in (stdin_fd, out_w, err_w):
                    os.close(fd)
            start = zygote.sent_at  # the wall clock starts at the request, not a zygote's start
            out, err, timed_out, overflow = _read_capped(
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
                _ZYGOTES.release(self, zygote)
            else:
                zygote.kill()
                warnings.warn(f"sandbox zygote failed: {problem}", RuntimeWarning, stacklevel=3)
                err += f"\nsandbox: zygote failed: {problem}".encode()
        wall = time.monotonic() - start
        stderr = err.decode(errors="replace")
        status = _classify(code, timed_out, overflow, wall, stderr, limits)
        return ExecResult(status, out.decode(errors="replace"), stderr, code, wall, out)

    def _bwrap_argv(
        self, files: Mapping[str, object], fds: list[int], executable: set[str], limits: Limits
    ) -> list[str]:
        assert self.bwrap is not None
        argv = [self.bwrap, *_namespace_args(), *_fs_args(limits.tmpfs_mb, self._extra_binds())]
        for name, fd in zip(files, fds):
            argv += ["--perms", "0755" if name in executable else "0644"]
            argv += ["--file", str(fd), f"{WORKDIR}/{name}"]
        argv += ["--clearenv", *[a for k, v in self._env().items() for a in ("--setenv", k, v)]]
        return argv + ["--", *_prlimit_argv(limits)]

    def _zygote_argv(self) -> list[str]:
        """The long-lived bwrap a zygote runs in: the per-run namespaces and filesystem, but no
        files, limits or environment of any program (each request brings its own)."""
        assert self.bwrap is not None
        argv = [self.bwrap, *_namespace_args(), *_fs_args(1, self._extra_binds())]
        argv += ["--clearenv", "--setenv", "PATH", SANDBOX_PATH]
        return argv + ["--", self.python, "-I", "-S", "-c", _zygote_source()]

    def _extra_binds(self) -> list[tuple[str, str]]:
        binds = [(path, f"{PYLIB_DIR}/{os.path.basename(path)}") for path in self.python_modules]
        real = os.path.realpath(self.python)
        if not real.startswith("/usr/"):
            prefix = os.path.dirname(os.path.dirname(real))
            binds.append((prefix, prefix))
        return binds

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

    def _run_unsandboxed(
        self,
        files: Mapping[str, str | bytes],
        cmd: Sequence[str],
        stdin: str | bytes,
        limits: Limits,
        executable: set[str],
    ) -> ExecResult:
        warnings.warn(
            f"running untrusted code WITHOUT a sandbox (allow_unsandboxed=True); {INSTALL_HINT}",
            RuntimeWarning,
            stacklevel=3,
        )
        env = self._env()
        if self.python_modules:
            env["PYTHONPATH"] = os.pathsep.join(os.path.dirname(p) for p in self.python_modules)
        with tempfile.TemporaryDirectory(prefix="openk1-unsandboxed-") as tmp:
            for name, data in files.items():
                path = os.path.join(tmp, name)
                with open(path, "wb") as f:
                    f.write(_as_bytes(data))
                os.chmod(path, 0o755 if name in executable else 0o644)
            argv = _prlimit_argv(limits, with_nproc=False) + list(cmd)
            stdin_fd = _memfd("stdin", _as_bytes(stdin))
            try:
                return _execute(argv, stdin_fd, [], env, limits, False, cwd=tmp)
            finally:
                os.close(stdin_fd)


def _execute(
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
        out, err, timed_out, overflow = _read_capped(
            proc.stdout.fileno(),
            proc.stderr.fileno(),
            pidfd,
            start + limits.wall_s,
            limits.output_bytes,
        )
    finally:
        os.close(pidfd)
        code = _kill_and_reap(proc)
    wall = time.monotonic() - start
    stderr = err.decode(errors="replace")
    status = _classify(code, timed_out, overflow, wall, stderr, limits)
    return ExecResult(status, out.decode(errors="replace"), stderr, code, wall, out)


@functools.cache
def _zygote_source() -> str:
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


def run(
    files: Mapping[str, str | bytes],
    cmd: Sequence[str],
    stdin: str | bytes = "",
    limits: Limits = Limits(),
    *,
    allow_unsandboxed: bool = False,
) -> ExecResult:
    """Run `cmd` on `stdin` in a fresh default Sandbox holding `files`."""
    return Sandbox(allow_unsandboxed=allow_unsandboxed).run(files, cmd, stdin, limits)


@dataclass(frozen=True)
class Job:
    """One run for SandboxPool.map."""

    files: Mapping[str, str | bytes]
    cmd: Sequence[str]
    stdin: str | bytes = ""
    limits: Limits = Limits()
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
