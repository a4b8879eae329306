"""The sandbox runner itself: statuses, limits, cleanup, the pool, and the bwrap-missing paths."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from openk1.sandbox import (
    INSTALL_HINT,
    Job,
    Limits,
    Sandbox,
    SandboxPool,
    SandboxUnavailable,
    run,
)
from openk1.sandbox import zygote_pool as sandbox_module

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason=INSTALL_HINT)
FAST = Limits(wall_s=1.0, cpu_s=1.0, memory_mb=256, processes=8)


@pytest.fixture(scope="module", params=["zygote", "per_run"])
def box(request: pytest.FixtureRequest) -> Sandbox:
    return Sandbox(mode=request.param)


@pytest.fixture(scope="module")
def zbox() -> Sandbox:
    return Sandbox(mode="zygote")


def _py(box: Sandbox, source: str, stdin: str = "", limits: Limits = FAST):
    return box.run({"main.py": source}, box.python_argv("main.py"), stdin, limits)


def _host_pids_with(marker: str) -> list[int]:
    """Host processes whose command line contains `marker`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def test_runs_program_on_stdin(box: Sandbox) -> None:
    result = _py(box, "print(input()[::-1])", "abc\n")
    assert (result.status, result.stdout, result.exit_code) == ("OK", "cba\n", 0)


def test_module_level_run_and_files(box: Sandbox) -> None:
    files = {"main.py": "import helper\nprint(helper.X)", "helper.py": "X = 41 + 1"}
    result = run(files, box.python_argv("main.py"), limits=FAST)
    assert result.stdout == "42\n"


def test_file_names_must_be_plain(box: Sandbox) -> None:
    with pytest.raises(ValueError, match="plain names"):
        box.run({"../escape.py": "print(1)"}, box.python_argv("main.py"))


def test_nonzero_exit_is_runtime_error(box: Sandbox) -> None:
    result = _py(box, "raise SystemExit(3)")
    assert (result.status, result.exit_code) == ("RE", 3)


def test_cpu_loop_is_tle_by_cpu_limit(box: Sandbox) -> None:
    result = _py(box, "while True: pass", limits=Limits(wall_s=20.0, cpu_s=1.0))
    assert result.status == "TLE"
    assert result.exit_code == 128 + signal.SIGXCPU  # RLIMIT_CPU stopped it, not the wall limit
    assert result.wall_s < 20.0


def test_sleep_is_tle_at_wall_limit(box: Sandbox) -> None:
    result = _py(box, "import time\ntime.sleep(30)")
    assert result.status == "TLE" and 0.9 < result.wall_s < 1.8


def test_memory_bomb_is_mle(box: Sandbox) -> None:
    result = _py(box, "x = bytearray(1 << 30)\nprint(len(x))")
    assert result.status == "MLE" and result.stdout == ""


def test_huge_output_is_ole_and_capped(box: Sandbox) -> None:
    limits = Limits(wall_s=2.0, cpu_s=2.0, output_bytes=10_000)
    result = _py(box, "while True: print('x' * 1000)", limits=limits)
    assert result.status == "OLE" and len(result.raw_stdout) <= 10_000


def test_big_file_is_refused(box: Sandbox) -> None:
    result = _py(box, "open('big', 'w').write('a' * (2 << 20))", limits=Limits(file_size_mb=1))
    assert result.status == "RE" and "File too large" in result.stderr


def test_closed_streams_still_hit_wall_limit(box: Sandbox) -> None:
    result = _py(box, "import os, time\nos.close(1)\nos.close(2)\ntime.sleep(30)")
    assert result.status == "TLE" and result.wall_s < 1.8


def test_background_processes_are_killed(box: Sandbox) -> None:
    marker = f"openk1-daemon-{os.getpid()}-{time.time_ns()}"
    source = (
        "import os, subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}],"
        " start_new_session=True)\n"
        "print('spawned')\n"
    )
    result = _py(box, source)
    assert result.stdout == "spawned\n"
    assert _host_pids_with(marker) == []


def test_pool_runs_in_order_and_in_parallel(box: Sandbox) -> None:
    jobs = [
        Job(
            {"m.py": f"import time\ntime.sleep(0.3)\nprint({i})"}, box.python_argv("m.py"), "", FAST
        )
        for i in range(4)
    ]
    with SandboxPool(workers=2, sandbox=box) as pool:
        pool.map([Job({"m.py": "pass"}, box.python_argv("m.py"), "", FAST)] * 2)  # start zygotes
        start = time.monotonic()
        results = pool.map(jobs)
    assert [r.stdout for r in results] == ["0\n", "1\n", "2\n", "3\n"]
    assert time.monotonic() - start < 4 * 0.3 + 0.5  # 4 x 0.3 s sleeps on 2 workers


def test_missing_bwrap_is_a_clear_error() -> None:
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        Sandbox(bwrap=None)


def test_unsandboxed_needs_flag_and_warns_every_time() -> None:
    box = Sandbox(bwrap=None, allow_unsandboxed=True)
    for _ in range(2):
        with pytest.warns(RuntimeWarning, match="WITHOUT a sandbox"):
            result = box.run({"main.py": "print(6 * 7)"}, box.python_argv("main.py"), "", FAST)
        assert result.stdout == "42\n"


# ---------------------------------------------------------------- zygote: isolation between runs


def _zygote_pids(box: Sandbox) -> list[int]:
    """Host pids of the idle zygotes serving `box` (white-box: which bwrap ran the last run)."""
    return [z.proc.pid for z in sandbox_module._ZYGOTES._idle.get(box, [])]


def test_zygote_next_run_sees_nothing_left_behind(zbox: Sandbox) -> None:
    marker = f"openk1-leftover-{os.getpid()}-{time.time_ns()}"
    leave = (
        "import os, subprocess, sys\n"
        "open('/tmp/left.txt', 'w').write('x')\n"
        "open('/dev/shm/left', 'w').write('x')\n"
        "os.mkdir('/tmp/dir')\n"
        "import ctypes\n"
        "assert ctypes.CDLL(None).shmget(4242, 4096, 0o1666) >= 0  # a SysV shared memory segment\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}],"
        " start_new_session=True)\n"
        "print(sorted(os.listdir('/tmp')))\n"
    )
    look = (
        "import os\n"
        "print(sorted(os.listdir('/tmp')), os.listdir('/dev/shm'))\n"
        "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
        "print(open('/proc/sysvipc/shm').read().count('\\n'))\n"
    )
    _py(zbox, "print(1)")
    before = _zygote_pids(zbox)
    first = _py(zbox, leave)
    assert first.stdout == "['dir', 'left.txt', 'main.py']\n", first
    assert _zygote_pids(zbox) == before  # the same zygote serves the next run
    second = _py(zbox, look)
    assert second.stdout == "['main.py'] []\n[1, 2]\n1\n", second  # only the header line
    assert _host_pids_with(marker) == []


def test_zygote_cannot_be_signalled_or_inspected(zbox: Sandbox) -> None:
    source = (
        "import os, signal\n"
        "for path in ('/proc/1/mem', '/proc/1/environ', '/proc/1/root/tmp'):\n"
        "    try:\n"
        "        print(path, len(os.listdir(path) if path.endswith('tmp') else open(path, 'rb').read(1)))\n"
        "    except OSError as e:\n"
        "        print(path, type(e).__name__)\n"
        "for pid in range(1, 1 << 15):\n"
        "    if pid != os.getpid():\n"
        "        try:\n"
        "            os.kill(pid, signal.SIGKILL)\n"
        "        except OSError:\n"
        "            pass\n"
        "print('alive')\n"
    )
    _py(zbox, "print(1)")
    before = _zygote_pids(zbox)
    result = _py(zbox, source, limits=Limits(wall_s=5.0, cpu_s=4.0))
    assert result.stdout.splitlines() == [
        "/proc/1/mem PermissionError",
        "/proc/1/environ PermissionError",
        "/proc/1/root/tmp PermissionError",
        "alive",
    ], result
    assert _zygote_pids(zbox) == before
    assert _py(zbox, "print(6 * 7)").stdout == "42\n"


def test_zygote_shared_by_equal_sandboxes_and_survives_pool_threads(zbox: Sandbox) -> None:
    jobs = [Job({"m.py": f"print({i})"}, zbox.python_argv("m.py"), "", FAST) for i in range(6)]
    with SandboxPool(workers=2, sandbox=Sandbox(mode="zygote")) as pool:
        assert [r.stdout for r in pool.map(jobs)] == [f"{i}\n" for i in range(6)]
    time.sleep(0.2)  # bwrap's --die-with-parent would fire now if a pool thread had forked it
    zygotes = sandbox_module._ZYGOTES._idle[zbox]
    assert zygotes and all(z.proc.poll() is None for z in zygotes)


def test_zygote_replaced_after_timeout(zbox: Sandbox) -> None:
    _py(zbox, "print(1)")
    before = _zygote_pids(zbox)
    assert _py(zbox, "import time\ntime.sleep(30)").status == "TLE"
    after = _py(zbox, "print(2)")
    assert after.stdout == "2\n" and not set(_zygote_pids(zbox)) & set(before[-1:])


def test_unknown_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="mode"):
        Sandbox(mode="fast")  # type: ignore[arg-type]
