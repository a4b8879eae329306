"""Continuous batching vs the plain batched loop: generated tokens/s on uneven response lengths.

    .venv/bin/python benchmarks/continuous_batching.py [--sequences 256 --batch-size 64 ...]

Both methods are the same engine (rollout/hf.py) with `continuous_batching` on or off, run
alternately in one process (this machine's timings vary run to run: medians over repeats and
their ratio, never one absolute time). Lengths are made uneven and reproducible by giving each
request a token budget drawn from a long-tailed distribution (most responses short, a few up to
max_new_tokens), as long-CoT lengths are; the model is the demo-sized tiny Llama (random
weights) or --model DIR. The two methods must return the same tokens: checked on every repeat.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from openk1.models.forward import tokenize
from openk1.models.tiny import TinyModelConfig, char_tokenizer, tiny_llama
from openk1.rollout.engine import Request
from openk1.rollout.hf import HFEngine, SamplingConfig


def requests(tokenizer: object, count: int, max_new_tokens: int, seed: int) -> list[Request]:
    """`count` addition prompts, budgets 4 + Exp(mean max_new_tokens / 5), capped at the max."""
    rng = random.Random(seed)
    prompts = [f"{rng.randint(1, 999)}+{rng.randint(1, 999)}=" for _ in range(count)]
    ids = tokenize(tokenizer, prompts)
    budgets = [min(max_new_tokens, 4 + int(rng.expovariate(5 / max_new_tokens))) for _ in range(count)]
    return [Request(tuple(p), (seed, i), budget=b) for i, (p, b) in enumerate(zip(ids, budgets))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="", help="HF model directory (default: demo-sized random tiny Llama)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        from openk1.models.io import load_model

        model, tokenizer = load_model(args.model)
    else:
        tokenizer = char_tokenizer()
        size = TinyModelConfig(hidden=128, layers=4, heads=4, kv_heads=4, intermediate=384)
        model = tiny_llama(size, tokenizer, seed=0)
    batch = requests(tokenizer, args.sequences, args.max_new_tokens, seed=0)
    engines = {name: HFEngine(model, tokenizer, SamplingConfig(
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, continuous_batching=on))
        for name, on in (("static", False), ("continuous", True))}
    rates: dict[str, list[float]] = {name: [] for name in engines}
    engines["continuous"].sample(batch[:8])                                 # warm-up
    for _ in range(args.repeats):
        outputs = {}
        for name, engine in engines.items():                                 # alternate
            start = time.perf_counter()
            outputs[name] = engine.sample(batch)
            rates[name].append(float(outputs[name].lengths.sum()) / (time.perf_counter() - start))
        assert torch.equal(outputs["static"].response_ids, outputs["continuous"].response_ids)
    lengths = outputs["static"].lengths.float()
    print(f"{args.sequences} sequences, batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, "
          f"{args.threads} thread(s); response tokens mean {lengths.mean():.1f}, "
          f"p50 {lengths.median():.0f}, max {lengths.max():.0f}")
    print(f"| method | generated tokens/s (median of {args.repeats}) |\n|---|---|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.0f} |")
    ratio = statistics.median(c / s for c, s in zip(rates["continuous"], rates["static"]))
    print(f"continuous / static: {ratio:.2f}x (median of per-repeat ratios)")


if __name__ == "__main__":
    main()
