"""Sandbox overhead: a trivial Python program (`print(1)`) in bwrap vs a bare subprocess.

Both sides run the same interpreter with the same flags on the same file, alternating run by
run so machine noise hits both alike; we report medians and their ratio (timings
on a shared machine vary, so only side-by-side ratios mean much). Both sandbox modes:
  zygote   the default: a long-lived bwrap per worker starts each program in new namespaces
  per_run  one bwrap (with prlimit) per program
Two flag sets:
  -s     what the verifier runs (no user site-packages; `site` still imported)
  -s -S  no `site` at all: the smallest Python start, so the sandbox's own cost shows most
Throughput: executions per second of a pool of `--workers` threads, sandboxed vs bare.

    OMP_NUM_THREADS=1 python benchmarks/sandbox_overhead.py [--runs 60] [--jobs 200] [--modes zygote]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from openk1.sandbox import Limits, Sandbox

PROGRAM = "print(1)\n"
LIMITS = Limits(wall_s=10.0, cpu_s=5.0)


def sandboxed_runner(box: Sandbox, flags: list[str]) -> Callable[[], None]:
    def run() -> None:
        result = box.run({"main.py": PROGRAM}, [box.python, *flags, "main.py"], "", LIMITS)
        assert result.stdout == "1\n", result

    return run


def bare_runner(python: str, flags: list[str], workdir: Path) -> Callable[[], None]:
    (workdir / "main.py").write_text(PROGRAM)
    argv = [python, *flags, "main.py"]

    def run() -> None:
        out = subprocess.run(
            argv, cwd=workdir, capture_output=True, env={"PATH": "/usr/bin"}, check=True
        )
        assert out.stdout == b"1\n"

    return run


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def latency(sandboxed: Callable[[], None], bare: Callable[[], None], runs: int) -> dict[str, float]:
    """Median seconds per run of each, measured alternately."""
    for fn in (sandboxed, bare):  # warm-up: page cache, the sandbox probe
        fn()
    box_t, bare_t = [], []
    for _ in range(runs):
        box_t.append(timed(sandboxed))
        bare_t.append(timed(bare))
    box_ms, bare_ms = statistics.median(box_t) * 1e3, statistics.median(bare_t) * 1e3
    return {
        "sandbox_ms": box_ms,
        "bare_ms": bare_ms,
        "overhead_ms": box_ms - bare_ms,
        "ratio": box_ms / bare_ms,
    }


def throughput(fn: Callable[[], None], jobs: int, workers: int) -> float:
    """Executions per second of `jobs` runs on a pool of `workers` threads."""
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda _: fn(), range(jobs)))
    return jobs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["zygote", "per_run"])
    args = parser.parse_args()
    report: dict[str, object] = {"python": Sandbox().python, "workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            box = Sandbox(mode=mode)
            for flags in (["-s"], ["-s", "-S"]):
                sandboxed, bare = (
                    sandboxed_runner(box, flags),
                    bare_runner(box.python, flags, Path(tmp)),
                )
                row = latency(sandboxed, bare, args.runs)
                tput = [
                    throughput(f, args.jobs, args.workers)
                    for f in (sandboxed, bare, sandboxed, bare)
                ]
                row["sandbox_exec_per_s"] = statistics.median(tput[0::2])
                row["bare_exec_per_s"] = statistics.median(tput[1::2])
                report[f"{mode} {' '.join(flags)}"] = {k: round(v, 2) for k, v in row.items()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
