"""The harness of program-style code tests (HumanEval `check`, MBPP asserts): one sandboxed run
per submission, with the test and the submission in two processes.

`rewards/code.py` copies this file into the sandbox as harness.py beside solution.py and runs
`python -s harness.py` with a JSON job on stdin: {"nonce": hex, "program": SRC, "entry_point":
NAME or null}. Standard library only; the scorer imports it only for `is_plain` and its path.

T is the process python starts (it runs the test), W the worker it forks (it runs the submission):
  1. T drops its own folder (the sandbox's /tmp, which W can write) from sys.path and becomes
     non-dumpable (prctl), so no other process of the run can ptrace it or open its
     /proc/<pid>/mem, /proc/<pid>/fd or /proc/<pid>/environ.
  2. T forks W before reading stdin. W points its stdin at /dev/null and its stdout at stderr
     (it holds no handle on the run's stdin or stdout) and waits.
  3. T reads the job from stdin and truncates that in-memory file to nothing (the per-run
     sandbox's init, bwrap, holds it open as its own fd 0), then lets W go: W runs solution.py
     as module "solution", reports its top-level names and answers calls [name, args, kwargs]
     with the plain result, the exception raised, or the exit it took. So W never sees the
     nonce or the test program: not on stdin, not in a file, not in its own memory.
  4. T builds the test's namespace: a proxy for every callable the submission defined, a copy
     of every plain value (up to MAX_COPIED items), a fresh import of every standard-library
     module it imported; names of builtins are left out, so a submission's own `abs` or
     `isinstance` cannot shadow the test's. T runs SRC there, then `check(proxy of
     entry_point)` when the job names an entry point.
  5. Only when that completes, with no failure of W on the way, T prints "\\n<nonce>\\n".
Values cross as tagged JSON built only of exact built-in types (`is_plain`, the call harness's
rule too), so the test sees only plain values and runs no code of the submission.

T's exit code: 0 with the nonce (passed); 0 without it (a failed assertion; or W exited, returned
a value that is not plain, or broke the protocol: a wrong answer); 1 (any other exception: a
runtime error, MemoryError reads as MLE); 128+n when W died of signal n (SIGXCPU reads as TLE).
"""

from __future__ import annotations

import builtins
import importlib
import json
import os
import signal
import stat
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any, NoReturn

MAX_MESSAGE = 64 << 20  # bytes of one message between T and W
MAX_COPIED = 10_000  # items of a plain top-level value copied into the test's namespace
PR_SET_DUMPABLE = 4
SEQUENCES: dict[str, type] = {"L": list, "T": tuple, "E": set, "Z": frozenset}


def is_plain(x: object) -> bool:
    """True iff `x` is built only of exact built-in types (int, float, complex, str, bytes, bool,
    None, list, tuple, dict, set, frozenset): no subclass, so nothing that can fake equality."""
    kind = type(x)
    if isinstance(x, (list, tuple, set, frozenset)) and any(kind is t for t in (list, tuple, set, frozenset)):
        return all(is_plain(v) for v in x)
    if isinstance(x, dict) and kind is dict:
        return all(is_plain(k) and is_plain(v) for k, v in x.items())
    return any(kind is t for t in (int, float, complex, str, bytes, bool, type(None)))


def _json_scalar(x: object) -> bool:
    kind = type(x)
    return x is None or kind is bool or kind is int or kind is float or kind is str


def encode(x: object) -> Any:
    """A plain value as JSON: int, float, str, bool and None as themselves, anything else as a
    tagged list ["L", [...]], ["T", ...], ["E", ...], ["Z", ...], ["D", [[k, v], ...]],
    ["C", real, imag], ["Y", hex]. TypeError for a value that is not plain."""
    kind = type(x)
    if _json_scalar(x):
        return x
    if isinstance(x, complex) and kind is complex:
        return ["C", x.real, x.imag]
    if isinstance(x, bytes) and kind is bytes:
        return ["Y", x.hex()]
    if isinstance(x, dict) and kind is dict:
        return ["D", [[encode(k), encode(v)] for k, v in x.items()]]
    if isinstance(x, (list, tuple, set, frozenset)):
        for tag, sequence in SEQUENCES.items():
            if kind is sequence:
                return [tag, [encode(v) for v in x]]
    raise TypeError(f"not a plain built-in value: {kind.__name__}")


def decode(node: Any) -> Any:
    """The value of an `encode` tree; it builds exact built-in types only. ValueError (or
    TypeError, for an unhashable key) when malformed."""
    if _json_scalar(node):
        return node
    if type(node) is not list or len(node) != 2 + (node[:1] == ["C"]) or type(node[0]) is not str:
        raise ValueError(f"malformed value {str(node)[:40]}")
    tag, payload = node[0], node[1]
    if tag == "C" and type(node[1]) is float and type(node[2]) is float:
        return complex(node[1], node[2])
    if tag == "Y" and type(payload) is str:
        return bytes.fromhex(payload)
    if tag in SEQUENCES and type(payload) is list:
        return SEQUENCES[tag](decode(v) for v in payload)
    if tag == "D" and type(payload) is list:
        return {decode(k): decode(v) for k, v in payload}
    raise ValueError(f"malformed value {str(node)[:40]}")


def send(fd: int, message: Any) -> None:
    """Write one length-prefixed JSON message."""
    data = json.dumps(message).encode()
    view = memoryview(len(data).to_bytes(8, "big") + data)
    while view:
        view = view[os.write(fd, view) :]


def _read(fd: int, size: int) -> bytes | None:
    chunks, got = [], 0
    while got < size:
        chunk = os.read(fd, min(size - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def receive(fd: int) -> Any:
    """The next message; None at end of file (the writer is gone)."""
    header = _read(fd, 8)
    if header is None:
        return None
    size = int.from_bytes(header, "big")
    if size > MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes")
    body = _read(fd, size)
    return None if body is None else json.loads(body)


# ---------------------------------------------------------------- W: the submission's process


def _outcome(exc: BaseException) -> list[Any]:
    """W's reply for an exception of the submission: an exit, or its class and message."""
    if isinstance(exc, SystemExit):
        return ["exit", "SystemExit"]
    traceback.print_exception(exc)
    kind = type(exc)
    builtin = kind.__module__ == "builtins" and getattr(builtins, kind.__name__, None) is kind
    try:
        message = str(exc)[:2000]
    except Exception:  # noqa: BLE001 - a submission's exception may fail to print
        message = "?"
    return ["raise", str(kind.__name__), message, builtin]


def _small(x: object, budget: int = MAX_COPIED) -> bool:
    """Whether `x` holds at most `budget` items in all (a big table is not copied)."""
    stack = [x]
    while stack:
        budget -= 1
        item = stack.pop()
        if budget < 0:
            return False
        if isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack += item
    return True


def _names(namespace: dict[str, Any]) -> list[list[Any]]:
    """[name, kind, payload] of each top-level name: "call", "value" (plain and `_small`),
    "module"."""
    names: list[list[Any]] = []
    for name, value in list(namespace.items()):
        if name.startswith("__"):
            continue
        if isinstance(value, types.ModuleType):
            names.append([name, "module", str(value.__name__)])
        elif _small(value) and is_plain(value):
            names.append([name, "value", encode(value)])
        elif callable(value):
            names.append([name, "call", None])
    return names


def _answer(namespace: dict[str, Any], request: list[Any]) -> list[Any]:
    name, args, kwargs = request
    try:
        function = namespace.get(name)
        if function is None:
            raise NameError(f"name {name!r} is not defined")
        result = function(*[decode(a) for a in args], **{k: decode(v) for k, v in kwargs.items()})
        if not is_plain(result):
            return ["nonplain", str(type(result).__name__)]
        return ["ok", encode(result)]
    except BaseException as exc:  # noqa: BLE001 - SystemExit too: reported, never obeyed
        return _outcome(exc)


def _reply(fd: int, message: list[Any]) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - the submission may have closed or replaced it
            pass
    send(fd, message)


def serve(requests: int, replies: int) -> NoReturn:
    """W: run solution.py, report its top-level names, answer calls until T closes the pipe."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    if receive(requests) != "go":  # T could not take the job
        os._exit(0)
    namespace: dict[str, Any] = {"__name__": "solution", "__builtins__": builtins}
    try:
        with open("solution.py", encoding="utf-8") as f:
            exec(compile(f.read(), "solution.py", "exec"), namespace)
        ready = ["ready", _names(namespace)]
    except BaseException as exc:  # noqa: BLE001 - an exit before the test ran fails it too
        ready = _outcome(exc)
    _reply(replies, ready)
    while (request := receive(requests)) is not None:
        _reply(replies, _answer(namespace, request))
    os._exit(0)


# ---------------------------------------------------------------- T: the test's process


class Failed(BaseException):
    """A failure the test program cannot catch (no Exception): W exited or died, returned a
    value that is not plain, or broke the protocol. `code`: T's exit code."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class SubmissionError(Exception):
    """An exception of a class the submission defined, re-raised by name and message."""


def _rebuild(name: Any, message: Any, builtin: Any) -> Exception:
    """The exception W reported: the built-in class of that name, else SubmissionError. Never
    StopIteration: raised from a function that `map` calls, it would end the test's loop early
    (`all(map(...))` true) instead of failing it."""
    kind = getattr(builtins, name, None) if builtin is True and type(name) is str else None
    stops = (StopIteration, StopAsyncIteration)
    if isinstance(kind, type) and issubclass(kind, Exception) and not issubclass(kind, stops):
        try:
            return kind(str(message))
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs five arguments
            pass
    return SubmissionError(f"{name}: {message}")


class Worker:
    """T's side of W: calls by name over two pipes; the first failure sticks."""

    def __init__(self, pid: int, requests: int, replies: int) -> None:
        self.pid, self.requests, self.replies = pid, requests, replies
        self.failure: Failed | None = None

    def fail(self, message: str, code: int = 0) -> Failed:
        if self.failure is None:
            self.failure = Failed(message, code)
        return self.failure

    def died(self, what: str) -> Failed:
        """The failure of a W that closed its pipe: how it ended (it is reaped here)."""
        _, status = os.waitpid(self.pid, 0)
        if os.WIFSIGNALED(status):
            signum = os.WTERMSIG(status)
            return self.fail(f"the submission was killed by signal {signum} during {what}", 128 + signum)
        code = os.waitstatus_to_exitcode(status)
        return self.fail(f"the submission exited (code {code}) during {what}")

    def reply(self, what: str) -> tuple[str, list[Any]]:
        """W's next reply as (kind, message); a broken or missing one is a failure."""
        try:
            message = receive(self.replies)
            if message is None:
                raise self.died(what)
            if type(message) is not list or not message or message[0] not in (
                "ready", "ok", "raise", "exit", "nonplain"
            ):
                raise ValueError(f"unknown reply {str(message)[:80]}")
            return message[0], message
        except Failed:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever W sent, it does not pass
            raise self.fail(f"broken reply to {what}: {exc!r}") from None

    def settle(self, kind: str, message: list[Any], what: str) -> Any:
        """The value of an "ok" reply; raise what the others mean."""
        if kind == "raise" and len(message) == 4:
            raise _rebuild(*message[1:])
        if kind == "exit":
            raise self.fail(f"the submission exited (SystemExit) during {what}")
        if kind == "nonplain":
            raise self.fail(f"{what} returned a {str(message[-1])[:80]}, not a plain built-in value")
        try:
            return decode(message[1])
        except Exception as exc:  # noqa: BLE001
            raise self.fail(f"broken reply to {what}: {exc!r}") from None

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call the submission's `name` in W; only plain values go and come back."""
        if self.failure is not None:
            raise self.failure
        what = f"{name}()"
        try:
            request = [name, [encode(a) for a in args], {k: encode(v) for k, v in kwargs.items()}]
        except (TypeError, RecursionError) as exc:
            raise self.fail(f"{what}: a program test passes only plain values ({exc})") from None
        try:
            send(self.requests, request)
        except OSError:
            raise self.died(what) from None
        kind, message = self.reply(what)
        return self.settle(kind, message, what)

    def proxy(self, name: str) -> Callable[..., Any]:
        """A function that calls the submission's `name` in W."""

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.call(name, args, kwargs)

        call.__name__ = call.__qualname__ = name
        return call

    def start(self) -> tuple[dict[str, Any], dict[str, Callable[..., Any]]]:
        """The test's namespace and the proxies of all callables, from W's ready message."""
        what = "the submission's top-level code"
        kind, message = self.reply(what)
        if kind != "ready":
            self.settle(kind, message, what)
            raise self.fail(f"no ready message from {what}")
        try:
            return self._namespace(message[1])
        except Exception as exc:  # noqa: BLE001
            raise self.fail(f"broken ready message: {exc!r}") from None

    def _namespace(self, names: list[Any]) -> tuple[dict[str, Any], dict[str, Callable[..., Any]]]:
        namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        proxies: dict[str, Callable[..., Any]] = {}
        stdlib: frozenset[str] = getattr(sys, "stdlib_module_names", frozenset())
        for name, kind, value in names:
            if type(name) is not str or not name.isidentifier() or name.startswith("__"):
                continue
            if kind == "call":
                proxies[name] = self.proxy(name)
            if name in vars(builtins):  # never shadow the test's builtins
                continue
            if kind == "call":
                namespace[name] = proxies[name]
            elif kind == "value":
                namespace[name] = decode(value)
            elif kind == "module" and type(value) is str and value.partition(".")[0] in stdlib:
                try:
                    namespace[name] = importlib.import_module(value)
                except Exception:  # noqa: BLE001 - the test's own imports still work
                    pass
        return namespace, proxies


def run_test(worker: Worker, job: dict[str, Any]) -> None:
    """Run the job's program in the test's namespace, then check(entry point) if it names one;
    raises unless everything completed."""
    namespace, proxies = worker.start()
    exec(compile(str(job["program"]), "<test>", "exec"), namespace)
    entry = job.get("entry_point")
    if entry is not None:
        check = namespace.get("check")
        if not isinstance(check, types.FunctionType) or check.__globals__ is not namespace:
            raise NameError("the test program defines no check(candidate) function")
        if entry not in proxies:
            raise NameError(f"the submission defines no function {entry!r}")
        check(proxies[entry])
    if worker.failure is not None:  # the test caught what it should not have
        raise worker.failure


def run(worker: Worker, job: dict[str, Any]) -> int:
    """T's exit code (module docstring); prints the nonce line only when the test passed."""
    try:
        run_test(worker, job)
    except BaseException as exc:  # noqa: BLE001 - everything but completion fails the test
        if worker.failure is not None:
            print(f"program test failed: {worker.failure}", file=sys.stderr)
            return worker.failure.code
        traceback.print_exc()
        return 0 if isinstance(exc, AssertionError) else 1
    sys.stdout.flush()
    os.write(1, f"\n{job['nonce']}\n".encode())
    return 0


def _non_dumpable() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def _take_stdin() -> bytes:
    """All of stdin; then an in-memory stdin file is emptied and fd 0 becomes /dev/null."""
    chunks = []
    while chunk := os.read(0, 1 << 20):
        chunks.append(chunk)
    if stat.S_ISREG(os.fstat(0).st_mode):
        os.ftruncate(0, 0)  # fails closed: a file that cannot be emptied stops the run here
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return b"".join(chunks)


def main() -> NoReturn:
    """T: set up, fork W, read the job, run the test, exit with `run`'s code."""
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != here]
    _non_dumpable()
    to_worker, from_worker = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(to_worker[1])
        os.close(from_worker[0])
        try:
            serve(to_worker[0], from_worker[1])
        finally:
            os._exit(1)  # W never runs T's code, whatever happens
    os.close(to_worker[0])
    os.close(from_worker[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # W may signal T; no KeyboardInterrupt here
    job = json.loads(_take_stdin())
    send(to_worker[1], "go")
    code = run(Worker(pid, to_worker[1], from_worker[0]), job)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    os._exit(code)


if __name__ == "__main__":
    main()
