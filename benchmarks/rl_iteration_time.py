"""Time per RL iteration of the demo config, split into rollout / reward / update.

    python benchmarks/rl_iteration_time.py [--model runs/demo/sft/model] [--iterations 8]

Without --model it first builds the demo's SFT model (quick preset). Prints a markdown table of
medians over the iterations (the first one is a warm-up and is dropped).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from openk1.cli import quiet_libraries
from openk1.config import build, merge
from openk1.report.run_dir import read_metrics
from openk1.stages import demo, rl


def sft_model(root: Path) -> tuple[str, dict[str, str]]:
    cfg = build(demo.DemoConfig, merge(demo.preset(quick=True), {"out": str(root), "rl": {"iterations": 0}}))
    summary = demo.run(cfg)
    return summary["stages"][0]["model"], {k: str(root / "data" / f"{k}.jsonl") for k in ("train", "heldout")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--data", help="train problems (default: the demo's)")
    parser.add_argument("--iterations", type=int, default=8)
    args = parser.parse_args()
    quiet_libraries()
    root = Path(tempfile.mkdtemp(prefix="openk1-bench-"))
    model, data = (args.model, {"train": args.data}) if args.model else sft_model(root)
    preset = demo.preset(quick=False)["rl"]
    cfg = build(rl.RLConfig, merge(preset, {"model": model, "data": data["train"], "out": str(root / "rl"),
                                           "iterations": args.iterations + 1, "eval_every": 10**6,
                                           "eval_at_start": False, "checkpoint_every": 10**6}))
    rl.run(cfg)
    rows = [r for r in read_metrics(root / "rl" / "metrics.jsonl") if "time/rollout" in r][1:]
    med = {k: statistics.median(r[f"time/{k}"] for r in rows) for k in ("rollout", "reward", "update")}
    total = sum(med.values())
    tokens = statistics.median(r["response_tokens/mean"] for r in rows)
    print(f"\nRL iteration, demo config ({cfg.prompts_per_iter} prompts x {cfg.samples_per_prompt} samples, "
          f"median of {len(rows)} iterations, {tokens:.0f} tokens/response)\n")
    print("| phase | seconds | share |\n|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.3f} | {100 * v / total:.0f}% |")
    print(f"| total | {total:.3f} | 100% |")
    gen = statistics.median(r["throughput/generated_tokens_per_s"] for r in rows)
    print(f"\ngenerated tokens/s (rollout): {gen:.0f}")


if __name__ == "__main__":
    main()
