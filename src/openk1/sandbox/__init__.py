"""Run untrusted programs inside bubblewrap (`bwrap`): the code-reward sandbox.

Guarantees of every run, in both modes: no network (an empty network namespace: loopback
only); its own PID namespace (/proc shows only the run's processes; it cannot signal or ptrace
anything outside); its own IPC, UTS and cgroup namespaces and a user namespace in which the
program has no capabilities (uid 1000 inside; `nobody` on the host when the scorer is root, so
RLIMIT_NPROC applies); a read-only root made of binds of the system directories (no view of
the host's home, project or /tmp); a fresh private size-capped tmpfs at /tmp as the working
directory (files are copied in from memory, never from a host path) and a fresh /dev/shm; an
empty environment (only what `Sandbox._env` sets); rlimits on CPU seconds, address space,
processes, file size and core size; a wall-clock limit and an output cap enforced by the
parent; and at the end every process it started is killed: the run's PID namespace dies with
its init.

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
end and the PID namespace takes every descendant with it. Here the program's init (PID 1) is
bwrap itself, which the program can inspect: its /proc/1/environ, /proc/1/fd/0 (the run's
stdin) and /proc/1/mem (which may hold a copy of the last file copied in). That reveals nothing
stdio or call tests hide; the program-test harness (program_harness.py) empties its stdin
before the submission runs for this reason.

Cost (benchmarks/sandbox_overhead.py, `print(1)`): bwrap's set-up and tear-down of a full set
of namespaces and a dozen mounts, the `prlimit` exec, and a full fork of the scorer (Popen can
not use vfork when switching to `nobody`) made per_run about 2.5x a bare subprocess; a zygote
run costs a few forks of a small Python process, a handful of mounts and no exec besides the
program's, about 1.5x.

Departure from the report: Kimi's sandbox is a crun container service on reused cgroups; this
is bwrap with the same isolation goals and no system daemon (the zygotes are the scorer's own
children and exit with it).

Modules: limits.py (`Limits`, rlimits), bwrap.py (finding bwrap, its namespaces and mounts,
`SandboxUnavailable`), modules.py (the interpreter and host modules a program sees),
execute.py (one process under wall-clock and output caps, `ExecResult`), zygote.py (the server
inside a zygote's bwrap) and zygote_pool.py (the scorer's side of it), box.py (`Sandbox`),
pool.py (`Job`, `SandboxPool`).

>>> box = Sandbox()
>>> box.run({"main.py": "print(input()[::-1])"}, box.python_argv("main.py"), "abc").stdout
'cba\\n'
"""

from openk1.sandbox.box import PER_RUN, ZYGOTE, Sandbox, run
from openk1.sandbox.bwrap import INSTALL_HINT, WORKDIR, SandboxUnavailable
from openk1.sandbox.execute import MLE, OK, OLE, RE, STATUSES, TLE, ExecResult
from openk1.sandbox.limits import Limits
from openk1.sandbox.modules import default_python, module_paths, module_spec
from openk1.sandbox.pool import Job, SandboxPool

__all__ = [
    "INSTALL_HINT",
    "MLE",
    "OK",
    "OLE",
    "PER_RUN",
    "RE",
    "STATUSES",
    "TLE",
    "WORKDIR",
    "ZYGOTE",
    "ExecResult",
    "Job",
    "Limits",
    "Sandbox",
    "SandboxPool",
    "SandboxUnavailable",
    "default_python",
    "module_paths",
    "module_spec",
    "run",
]
