"""The sandbox runner itself: statuses, limits, cleanup, the pool, and the bwrap-missing paths."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from openk1.rewards.sandbox import (
    INSTALL_HINT,
    Job,
    Limits,
    Sandbox,
    SandboxPool,
    SandboxUnavailable,
    run,
)

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason=INSTALL_HINT)
FAST = Limits(wall_s=1.0, cpu_s=1.0, memory_mb=256, processes=8)


@pytest.fixture(scope="module")
def box() -> Sandbox:
    return Sandbox()


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
    start = time.monotonic()
    with SandboxPool(workers=2, sandbox=box) as pool:
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
