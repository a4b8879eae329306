"""Classic vs chain-of-thought reward model on a judging task that needs arithmetic (report §2.3.5).

    OMP_NUM_THREADS=1 python benchmarks/cot_rm.py [--out runs/bench_cot_rm] [--train-rows 48000]

Data: data/judge_task.py, seed 0: `--train-rows` + `--heldout-rows` labelled rows (balanced;
a response `\\boxed{a*b+c}` or a plain number against a reference off by 0, 1 or 2), one
file; `rm train` holds out the same `--heldout-rows` rows for both runs (seed 0).
Models: two `openk1 init-model` runs with the same size and seed (hidden 64, 4 layers,
intermediate 192: ~0.22M parameters), so both reward models start from the same weights.
Training: `openk1 rm train`, one pass over the same rows, the same batch size (16) and LR
schedule (AdamW, 20 warm-up steps, cosine 5e-3 -> 1e-4) for both:
  classic  kind=classic: 2-way head, P(correct) >= 0.5 is the verdict
  cot      kind=cot: SFT on reasoning + `{"correct": ...}`, judged greedily by CoTVerifier
The CoT judge's prompt is COT_TEMPLATE without its instruction paragraph (the classic RM's
input with "Reasoning:" for the question; `template`, so summary.json's `verifier_options`
names it): the paragraph is 230 characters the random model would read in every example, ~3.9x
the time per step on this CPU. Prints and writes DIR/results.json: held-out accuracy, majority
baseline, malformed verdicts and wall seconds of each. Measured figures: docs/rewards.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml

from openk1.cli import main as openk1
from openk1.data.io import write_jsonl
from openk1.data.judge_task import make_judge_rows
from openk1.rewards.cot_verifier import COT_TEMPLATE

MODEL_SIZE = ["hidden=64", "intermediate=192", "layers=4", "heads=4", "kv_heads=4", "seed=0"]
SHARED = ["epochs=1", "batch_size=16", "log_every=100",
          "optim={lr: 0.005, lr_min: 0.0001, warmup_steps: 20}"]
KIND_SETTINGS = {
    "classic": ["kind=classic", "max_tokens=112"],           # inputs are 88-95 tokens
    "cot": ["kind=cot", "max_tokens=256", "max_new_tokens=96"],  # examples ~170 tokens
}
JUDGE_TEMPLATE = COT_TEMPLATE.split("\n\n", 1)[1]   # "Question: ...\n\nReasoning:"


def run_kind(kind: str, root: Path, rows: Path, heldout_fraction: float) -> dict[str, Any]:
    """`openk1 init-model` then `openk1 rm train --set kind=KIND` in ROOT/KIND."""
    init = root / f"init_{kind}"
    assert openk1(["init-model", "--out", str(init), "--overwrite", "--set", *MODEL_SIZE]) == 0
    config = root / f"{kind}.yaml"
    config.write_text(yaml.safe_dump({"template": JUDGE_TEMPLATE} if kind == "cot" else {}))
    start = time.perf_counter()
    code = openk1(["rm", "train", "--model", str(init), "--data", str(rows), "--config", str(config),
                   "--out", str(root / kind), "--overwrite", "--set", f"heldout_fraction={heldout_fraction}",
                   *SHARED, *KIND_SETTINGS[kind]])
    assert code == 0, f"rm train {kind} failed"
    summary: dict[str, Any] = json.loads((root / kind / "summary.json").read_text())
    summary["wall_seconds_total"] = time.perf_counter() - start
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_cot_rm")
    parser.add_argument("--train-rows", type=int, default=48_000)
    parser.add_argument("--heldout-rows", type=int, default=400)
    parser.add_argument("--kinds", nargs="+", default=["classic", "cot"], choices=list(KIND_SETTINGS))
    args = parser.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    total = args.train_rows + args.heldout_rows
    rows = root / "judge_rows.jsonl"
    write_jsonl(rows, make_judge_rows(total, seed=0))
    results = {kind: run_kind(kind, root, rows, args.heldout_rows / total) for kind in args.kinds}
    (root / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{args.train_rows} train / {args.heldout_rows} held-out rows, one pass, batch 16")
    print("| reward model | held-out accuracy | majority baseline | malformed | steps | wall s |")
    print("|---|---|---|---|---|---|")
    for kind, s in results.items():
        print(f"| {kind} | {s['heldout_accuracy']:.3f} | {s['heldout_majority_baseline']:.3f} | "
              f"{s.get('heldout_malformed', '-')} | {s['steps']} | {s['wall_seconds_total']:.0f} |")


if __name__ == "__main__":
    main()
