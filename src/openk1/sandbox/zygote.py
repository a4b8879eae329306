"""The sandbox's zygote: a small server that runs inside one long-lived bwrap sandbox and starts
each program in fresh namespaces of its own (used by `Sandbox`, mode "zygote").

Not imported by the scorer: `zygote_pool.py` passes this file's source to `python -I -S -c`
inside bwrap, so it uses the standard library only (`ctypes` for unshare, mount, prctl and capset).
At start the zygote resets every signal to SIG_DFL, becomes a child subreaper and says ready.

Per request (one JSON message on the control socket, with the fds stdin, stdout, stderr and one
memfd per file attached) the zygote forks:
  C  unshare(user, mount, PID, IPC, UTS, cgroup): a new user namespace in which C maps only its
     own uid/gid, a private copy of the (read-only) mount tree with a new size-capped tmpfs on
     /tmp holding copies of the files and a new tmpfs on /dev/shm. C forks I and exits, so I
     is handed to the zygote.
  I  PID 1 of the new PID namespace: mounts that namespace's /proc, forks P, closes every fd,
     becomes non-dumpable (so the program cannot ptrace it or read its /proc entries), drops
     every capability, and reaps children until P exits. With no signal handlers, as PID 1 it
     receives no signal sent from inside its namespace. Its exit makes the kernel kill
     everything left in the namespace and returns only once all of it is gone.
  P  PID 2: a new session, the rlimits of the request, an empty capability bounding set, stdio
     from the received fds and every other fd closed, /tmp as cwd, the request's environment
     only; execvp(argv) as the unprivileged uid, which clears its capabilities.
I exits with P's status (128+n for signal n, as bwrap's init does); the zygote replies
{"code": ...} once I is reaped, i.e. once no process of the run is left, and only then reads
the next request. Setup failures exit with SETUP_FAILED and say why on the run's stderr.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import json
import os
import resource
import signal
import socket
import sys
import traceback
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER = 4, 24, 36
CAP_VERSION_3 = 0x20080522
SETUP_FAILED = 125  # C's exit code when the namespaces could not be set up (stderr says why)
MAX_FDS = 253  # SCM_RIGHTS limit per message
WORKDIR = "/tmp"

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            None if fstype is None else fstype.encode(),
            ctypes.c_ulong(flags),
            None if data is None else data.encode(),
        ),
        f"mount {target}",
    )


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _drop_capabilities() -> None:
    header = (ctypes.c_uint32 * 2)(CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two empty {effective, permitted, inheritable} sets
    _check(_libc.capset(header, data), "capset")


def _drop_bounding_set() -> None:
    """Empty the capability bounding set, as bwrap's --cap-drop ALL does."""
    cap = 0
    while _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    if ctypes.get_errno() != errno.EINVAL:  # EINVAL: past the last capability
        _check(-1, "PR_CAPBSET_DROP")


def _copy_in(src_fd: int, path: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.lseek(src_fd, 0, os.SEEK_SET)
        while chunk := os.read(src_fd, 1 << 20):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _program(req: dict[str, Any], stdio: list[int]) -> None:
    """P: becomes the program (never returns)."""
    os.setsid()
    for resource_id, soft, hard in req["rlimits"]:
        resource.setrlimit(resource_id, (soft, hard))
    _drop_bounding_set()
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
    os.closerange(3, 1 << 20)
    os.chdir(WORKDIR)
    argv = req["argv"]
    try:
        os.execvpe(argv[0], argv, req["env"])
    except OSError as exc:
        os.write(2, f"sandbox: execvp {argv[0]}: {exc.strerror}\n".encode())
        os._exit(1)


def _fork(body: Any, stderr: int, what: str) -> int:
    """Fork; the child runs `body` (which never returns) and exits SETUP_FAILED if it does or
    raises, reporting `what` failed on the run's stderr. Returns the child's pid (parent)."""
    child = os.fork()
    if child == 0:
        try:
            body()
        except BaseException as exc:  # noqa: BLE001 - reported on the run's stderr
            os.write(stderr, f"sandbox: {what} failed: {exc!r}\n".encode())
        finally:
            os._exit(SETUP_FAILED)
    return child


def _init(req: dict[str, Any], stdio: list[int]) -> None:
    """I: PID 1 of the run's namespace (never returns)."""
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    child = _fork(lambda: _program(req, stdio), stdio[2], "setup")
    os.closerange(0, 1 << 20)
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    _drop_capabilities()
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(SETUP_FAILED)
        if pid == child:
            os._exit(_exit_code(status))


def _run(req: dict[str, Any], fds: list[int]) -> None:
    """C: sets up the run's namespaces, starts I and waits for it (never returns)."""
    stdio, file_fds = fds[:3], fds[3:]
    uid, gid = os.getuid(), os.getgid()
    try:
        flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC
        _check(_libc.unshare(flags | CLONE_NEWUTS | CLONE_NEWCGROUP), "unshare")
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
        _mount("none", "/", None, MS_REC | MS_PRIVATE, None)
        size = int(req["tmpfs_bytes"])
        _mount("tmpfs", WORKDIR, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=0755")
        _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=1048576,mode=0755")
        for (name, mode), fd in zip(req["files"], file_fds, strict=True):
            _copy_in(fd, f"{WORKDIR}/{name}", int(mode))
        for fd in file_fds:
            os.close(fd)
        _fork(lambda: _init(req, stdio), stdio[2], "init")
    except Exception as exc:  # noqa: BLE001 - reported on the run's stderr
        os.write(stdio[2], f"sandbox: setup failed: {exc}\n".encode())
        os._exit(SETUP_FAILED)
    os._exit(0)  # I is handed to the zygote, its subreaper


def _default_signals() -> None:
    """Every signal to SIG_DFL, once, for all forks: P execs with nothing ignored, and I (PID 1,
    no handlers) gets no signal at all from inside its namespace - the kernel drops them."""
    for sig in signal.valid_signals():
        if signal.getsignal(sig) not in (signal.SIG_DFL, None):
            signal.signal(sig, signal.SIG_DFL)


def serve(control_fd: int) -> None:
    """Answer requests on `control_fd` one at a time until the scorer closes it."""
    _default_signals()
    _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "PR_SET_CHILD_SUBREAPER")
    gc.disable()  # no collection in the forks: fewer copy-on-write faults
    gc.freeze()
    control = socket.socket(fileno=control_fd)
    control.sendall(b'{"ready": true}')
    while True:
        msg, fds, _, _ = socket.recv_fds(control, 1 << 20, MAX_FDS)
        if not msg:
            return
        try:
            req = json.loads(msg)
            child = os.fork()
            if child == 0:
                try:
                    control.close()
                    _run(req, fds)
                finally:
                    os._exit(SETUP_FAILED)
            for fd in fds:
                os.close(fd)
            _, status = os.waitpid(child, 0)  # C: 0 once I runs
            if status == 0:
                _, status = os.waitpid(-1, 0)  # I, reparented to the zygote
            reply: dict[str, Any] = {"code": _exit_code(status)}
        except Exception:  # noqa: BLE001 - the scorer discards this zygote
            reply = {"error": traceback.format_exc()}
        control.sendall(json.dumps(reply).encode())


if __name__ == "__main__":
    serve(int(sys.argv[1]))
