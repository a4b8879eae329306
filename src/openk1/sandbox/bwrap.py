"""bubblewrap (`bwrap`) itself: finding it, and the command line that isolates a run.

Namespaces: all of them (`--unshare-all`, so an empty network namespace), a user namespace in
which the program is uid 1000 with no capabilities, its own session. Filesystem: read-only
binds of the system directories (no view of the host's home, project or /tmp), the new PID
namespace's /proc, a minimal /dev, a fresh /dev/shm and a private size-capped tmpfs at /tmp as
the working directory; files enter from in-memory fds, and the environment is cleared.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence

WORKDIR = "/tmp"
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


class SandboxUnavailable(RuntimeError):
    """bwrap is missing or cannot create its namespaces on this machine."""


def find_bwrap() -> str | None:
    """The bwrap executable on PATH, or None where bubblewrap is not installed."""
    return shutil.which("bwrap")


def namespace_args() -> list[str]:
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


def fs_args(tmpfs_mb: int, extra_ro: Sequence[tuple[str, str]]) -> list[str]:
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


def sandbox_argv(bwrap: str, tmpfs_mb: int, extra_ro: Sequence[tuple[str, str]]) -> list[str]:
    """bwrap with the namespaces and filesystem of a run; files, env and command still to add."""
    return [bwrap, *namespace_args(), *fs_args(tmpfs_mb, extra_ro)]


def file_args(names: Iterable[str], fds: Sequence[int], executable: set[str]) -> list[str]:
    """Copy memfd `fds[i]` to /tmp/`names[i]`, mode 0755 for the executable ones, else 0644."""
    args: list[str] = []
    for name, fd in zip(names, fds):
        args += ["--perms", "0755" if name in executable else "0644"]
        args += ["--file", str(fd), f"{WORKDIR}/{name}"]
    return args


def env_args(env: Mapping[str, str]) -> list[str]:
    """An empty environment but for `env`."""
    return ["--clearenv", *[a for k, v in env.items() for a in ("--setenv", k, v)]]
