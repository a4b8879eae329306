"""A new user's first run, with every setting at its default: init-model -> sft -> eval -> rl -> eval.

    python benchmarks/new_user_defaults.py [--out DIR] [--rows 2000]

The task is one openk1's demo never uses: a number of 2-3 digits times a one-digit number, with
a short worked answer (`123*4 = 100*4 + 20*4 + 3*4 = 400 + 80 + 12 = 492` then `\\boxed{492}`).
Of the 7,920 problems, 200 are held out, `--rows` (distinct) are the SFT set and the rest are
the RL prompt set. Every command gets only --model / --data / --out (and eval's held-out
file): the tiny model's recommended settings (models/tiny.py RECOMMENDED, applied by the CLI)
and the stages' defaults do the rest. Prints the held-out accuracy after each stage and the
commands it ran.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from openk1.data.io import write_jsonl

HELD_OUT = 200


def worked(a: int, b: int) -> str:
    parts = [int(d) * 10 ** (len(str(a)) - 1 - i) for i, d in enumerate(str(a))]
    parts = [p for p in parts if p]
    split = " + ".join(f"{p}*{b}" for p in parts)
    products = " + ".join(str(p * b) for p in parts)
    return f"{a}*{b} = {split} = {products} = {a * b}\n\\boxed{{{a * b}}}"


def make_task(root: Path, rows: int, seed: int = 0) -> dict[str, Path]:
    pairs = [(a, b) for a in range(10, 1000) for b in range(2, 10)]
    random.Random(seed).shuffle(pairs)
    held, sft_pairs, train = pairs[:HELD_OUT], pairs[HELD_OUT:HELD_OUT + rows], pairs[HELD_OUT + rows:]
    prompt = "What is {a}*{b}?"
    problem = lambda a, b: {"prompt": prompt.format(a=a, b=b), "answer": str(a * b), "type": "math"}  # noqa: E731
    sft = [{"prompt": prompt.format(a=a, b=b), "response": worked(a, b)} for a, b in sft_pairs]
    paths = {"sft": root / "sft.jsonl", "train": root / "train.jsonl", "heldout": root / "heldout.jsonl"}
    write_jsonl(paths["sft"], sft)
    write_jsonl(paths["train"], [problem(a, b) for a, b in train])
    write_jsonl(paths["heldout"], [problem(a, b) for a, b in held])
    return paths


def openk1(*args: str) -> dict:
    command = [sys.executable, "-m", "openk1.cli", *args]
    print("$ openk1 " + " ".join(args), flush=True)
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="")
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="openk1-new-user-"))
    root.mkdir(parents=True, exist_ok=True)
    data = make_task(root, args.rows)
    start = time.perf_counter()
    results = []
    openk1("init-model", "--out", str(root / "init"), "--overwrite")
    sft = openk1("sft", "--model", str(root / "init"), "--data", str(data["sft"]), "--out", str(root / "sft"),
                 "--overwrite")
    results.append(("sft", openk1("eval", "--model", str(root / "sft"), "--data", str(data["heldout"]),
                                  "--out", str(root / "eval_sft"), "--overwrite"), sft.get("final_loss")))
    openk1("rl", "--model", str(root / "sft"), "--data", str(data["train"]), "--out", str(root / "rl"),
           "--overwrite")
    results.append(("rl", openk1("eval", "--model", str(root / "rl"), "--data", str(data["heldout"]),
                                 "--out", str(root / "eval_rl"), "--overwrite"), None))
    print("\n| stage | held-out accuracy | mean tokens | SFT final loss |\n|---|---|---|---|")
    for name, summary, loss in results:
        loss_text = "-" if loss is None else f"{loss:.3f}"
        print(f"| {name} | {100 * summary['accuracy']:.1f}% | {summary['mean_tokens']:.1f} | {loss_text} |")
    print(f"\n{args.rows} SFT rows, {HELD_OUT} held-out problems; {time.perf_counter() - start:.0f} s; run in {root}")


if __name__ == "__main__":
    main()
