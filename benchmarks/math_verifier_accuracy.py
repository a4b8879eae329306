"""Accuracy of openk1's verify_math vs plain math-verify, on labelled and external cases.

    OMP_NUM_THREADS=1 python benchmarks/math_verifier_accuracy.py [--shared PATH/TO/shared]

Plain math-verify means `verify(parse(gold), parse(response))` with default settings, the gold
wrapped in `$...$` unless it already holds math delimiters or a box. Both verifiers see every case
once, side by side, each call with cold parse caches; times are medians (this machine's timings
vary run to run, ratios less so). Prints a markdown table, the false positives, and the speed on an
integer answer (the fast path).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import math_verify.parser as mv_parser
from math_verify import parse, verify

import openk1.rewards.math as math_reward
from openk1.rewards.math import verify_math
from openk1.types import Problem

REPO = Path(__file__).resolve().parents[1]
LABELLED = REPO / "tests" / "rewards" / "math_cases.jsonl"
EXTERNAL_NAME = "math_verify_suite.jsonl"
SPEED_CALLS = 2000


def find_external(shared: str | None) -> Path | None:
    """shared/external/math_verify_suite.jsonl from --shared, $OPENK1_SHARED or a folder upwards."""
    if shared or os.environ.get("OPENK1_SHARED"):
        return Path(shared or os.environ["OPENK1_SHARED"]) / "external" / EXTERNAL_NAME
    for folder in REPO.parents:
        if (folder / "shared" / "external" / EXTERNAL_NAME).is_file():
            return folder / "shared" / "external" / EXTERNAL_NAME
    return None


def plain_math_verify(response: str, answer: str) -> float:
    """Math-Verify with its defaults, as its README shows it."""
    gold = answer if re.search(r"\\boxed|(?<!\\)\$|\\\(|\\\[", answer) else f"${answer}$"
    return float(verify(parse(gold), parse(response)))


def openk1_verify(response: str, answer: str) -> float:
    return verify_math(response, Problem(prompt="", answer=answer)).reward


VERIFIERS: dict[str, Callable[[str, str], float]] = {
    "openk1 verify_math": openk1_verify,
    "plain math-verify": plain_math_verify,
}


def clear_parse_caches() -> None:
    """Cold caches for every timed call, so that neither verifier profits from the other."""
    for fn in (mv_parser.parse_latex_cached, mv_parser.parse_expr_cached, mv_parser.extract_latex):
        fn.cache_clear()
    math_reward._parse_reference.cache_clear()


def evaluate(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per verifier: correct count, false positives (ids), false negatives, seconds per call."""
    stats: dict[str, dict[str, Any]] = {
        name: {"ok": 0, "fp": [], "fn": 0, "times": []} for name in VERIFIERS
    }
    for row in rows:
        for name, fn in VERIFIERS.items():
            clear_parse_caches()
            start = time.perf_counter()
            reward = fn(row["response"], row["answer"])
            stats[name]["times"].append(time.perf_counter() - start)
            got, want = int(reward == 1.0), int(row["expected"])
            stats[name]["ok"] += got == want
            if got > want:
                stats[name]["fp"].append(f"{row['id']} ({row['note']})")
            stats[name]["fn"] += got < want
    return stats


def speed(response: str, answer: str) -> dict[str, float]:
    """Median microseconds per call over SPEED_CALLS calls, in 10 interleaved blocks."""
    blocks: dict[str, list[float]] = {name: [] for name in VERIFIERS}
    for _ in range(10):
        for name, fn in VERIFIERS.items():
            start = time.perf_counter()
            for _ in range(SPEED_CALLS // 10):
                fn(response, answer)
            blocks[name].append((time.perf_counter() - start) / (SPEED_CALLS // 10) * 1e6)
    return {name: statistics.median(v) for name, v in blocks.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=None, help="the shared/ folder (holds external/)")
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    datasets = {"labelled (tests/rewards/math_cases.jsonl)": LABELLED}
    external = find_external(args.shared)
    if external is not None and external.is_file():
        datasets["external (Math-Verify's own tests)"] = external
    print(
        "| dataset | cases | verifier | accuracy | false positives | false negatives | median ms/case |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    false_positives: dict[str, list[str]] = {name: [] for name in VERIFIERS}
    for label, path in datasets.items():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for name, s in evaluate(rows).items():
            acc = 100 * s["ok"] / len(rows)
            ms = 1e3 * statistics.median(s["times"])
            false_positives[name] += s["fp"]
            print(
                f"| {label} | {len(rows)} | {name} | {acc:.1f}% | {len(s['fp'])} | {s['fn']} | {ms:.2f} |"
            )
    for name, cases in false_positives.items():
        print(f"\nFalse positives of {name}: {', '.join(cases) if cases else 'none'}.")
    response = "Let me think step by step. " * 40 + r"So the total is $\boxed{1,234}$."
    us = speed(response, "1234")
    ratio = us["plain math-verify"] / us["openk1 verify_math"]
    print(
        f"\nInteger answer, {SPEED_CALLS} calls: verify_math {us['openk1 verify_math']:.1f} us/call, "
        f"plain math-verify {us['plain math-verify']:.1f} us/call ({ratio:.0f}x)."
    )


if __name__ == "__main__":
    main()
