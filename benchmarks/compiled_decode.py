"""Eager vs compiled decode step of the lean decoder (models/lean_compiled.py), and what compiling costs.

    python benchmarks/compiled_decode.py                      # the demo's RL rollout (below)
    python benchmarks/compiled_decode.py --size vs_trl --prompts 8 --max-new-tokens 64 --batch-size 64 --ignore-eos
    python benchmarks/compiled_decode.py --dtype bf16 --rounds 7
    python benchmarks/compiled_decode.py --buckets            # CUDA's static shape buckets, on the CPU

Work: one RL iteration's rollout of presets/demo.yaml (32 prompts x 8 samples, up to 176 new
tokens, temperature 1, batch_size 256) on a random tiny Llama of the demo's size (hidden 128,
4 layers, 4 heads, MLP 384) or vs_trl.py's (hidden 256, 7 layers, 6M parameters); the random
model's EOS is kept, so rows leave as they finish, as in a real run (`--ignore-eos`: every row
decodes max_new_tokens tokens, and the table adds the time per decode step). Both variants
generate the same tokens (the script checks it); throughput is generated tokens per second of
`HFEngine.generate`.

Two child processes, each timing its first compiled call against its steady state:
  cold  an empty TORCHINDUCTOR_CACHE_DIR: tracing, inductor's code generation and the C++
        compiler, plus importing inductor;
  warm  the cache the cold child filled: tracing again, the compiled code loaded from disk (what
        a later run pays with openk1's default cache dir, ~/.cache/openk1/inductor).
compile s = first compiled call - median compiled call. The warm child then runs `--rounds`
alternating rounds of eager and compiled (which goes first alternates) for the medians; CPU
seconds (time.process_time) are printed next to wall seconds since they move less when other
processes load the cores. Break-even: compile s / (eager - compiled s per rollout).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from vs_trl import _NoEOS, machine  # benchmarks/ is on sys.path when this script runs

SIZES = {"demo": dict(hidden=128, layers=4, heads=4, kv_heads=4, intermediate=384),
         "vs_trl": dict(hidden=256, layers=7, heads=8, kv_heads=8, intermediate=768)}
PREFIX = "@@compiled_decode "


def engines(args: argparse.Namespace) -> tuple[Any, Any, list[str], int]:
    """The eager and the compiled HFEngine over one model, the prompts, the samples per prompt."""
    import torch

    from openk1.models.tiny import TinyModelConfig, char_tokenizer, tiny_llama
    from openk1.rollout.hf import HFEngine, SamplingConfig

    tokenizer = char_tokenizer()
    model = tiny_llama(TinyModelConfig(**SIZES[args.size]), tokenizer, seed=0).eval()
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    prompts = [f"{(37 * i) % 100}+{(11 * i + 5) % 100}=" for i in range(args.prompts)]
    if args.ignore_eos:   # every row runs to max_new_tokens: one decode step per token position
        tokenizer = _NoEOS(tokenizer)
    return (HFEngine(model, tokenizer, sampling, dtype), HFEngine(model, tokenizer, sampling, dtype, compile=True),
            prompts, args.samples)


def timed(engine: Any, prompts: list[str], k: int, seed: int) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    rollout = engine.generate(prompts, k, seed)
    return time.perf_counter() - wall, time.process_time() - cpu, rollout


def child(args: argparse.Namespace) -> None:
    """One process: the first compiled call, then steady-state rounds; a JSON line on stdout."""
    import torch

    from openk1.models import lean_compiled

    torch.set_num_threads(args.threads)
    if args.buckets:   # CUDA's static row and width buckets, on this device
        lean_compiled.CompiledDecoder.__init__ = functools.partialmethod(
            lean_compiled.CompiledDecoder.__init__, buckets=True)
    eager, compiled, prompts, k = engines(args)
    timed(eager, prompts, k, 0)                              # warm-up: lazy imports, allocator
    first, _, r_compiled = timed(compiled, prompts, k, 0)
    _, _, r_eager = timed(eager, prompts, k, 0)
    same_rows = (r_eager.response_ids == r_compiled.response_ids).all(1)
    both = r_eager.action_mask.bool() & same_rows[:, None]
    rows: dict[str, list[tuple[float, float]]] = {"eager": [], "compiled": []}
    counts = []   # generated tokens of round r (seed r): the same for both variants
    for r in range(1, (args.rounds if args.child == "warm" else 2) + 1):
        order = [("eager", eager), ("compiled", compiled)]
        for name, engine in order if r % 2 else order[::-1]:
            wall, cpu, rollout = timed(engine, prompts, k, r)
            rows[name].append((wall, cpu))
        counts.append(int(rollout.action_mask.sum()))
    tokens = statistics.median(counts)
    med = {name: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for name, v in rows.items()}
    stats = torch._dynamo.utils.counters["stats"]
    print(PREFIX + json.dumps({
        "first_compiled_s": first, "compile_s": first - med["compiled"][0], "tokens": tokens,
        "eager_s": med["eager"][0], "eager_cpu_s": med["eager"][1],
        "compiled_s": med["compiled"][0], "compiled_cpu_s": med["compiled"][1],
        "rows_same_tokens": int(same_rows.sum()), "rows": len(same_rows),
        "logp_max_abs_diff": float((r_eager.logp - r_compiled.logp)[both].abs().max()),
        "graphs": int(stats["unique_graphs"]), "forward_path": compiled.forward_path}), flush=True)


def run_child(kind: str, cache: str, argv: list[str]) -> dict[str, Any]:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run([sys.executable, __file__, *argv, "--child", kind], env=env, check=True,
                         capture_output=True, text=True).stdout
    line = next(x for x in out.splitlines() if x.startswith(PREFIX))
    result: dict[str, Any] = json.loads(line[len(PREFIX):])
    return result


def report(args: argparse.Namespace, cold: dict[str, Any], warm: dict[str, Any]) -> None:
    size = SIZES[args.size]
    print(f"machine: {machine()}")
    print(f"\nRollout: {args.prompts} prompts x {args.samples} samples, up to {args.max_new_tokens} new tokens, "
          f"batch_size {args.batch_size}, model {args.size} (hidden {size['hidden']}, {size['layers']} layers), "
          f"{args.dtype}, {args.threads} thread(s){', static buckets' if args.buckets else ''}; "
          f"{warm['tokens']:.0f} generated tokens per rollout (median); medians of "
          f"{args.rounds} alternating rounds (warm child)\n")
    saved = warm["eager_s"] - warm["compiled_s"]
    head = " | ms per decode step" if args.ignore_eos else ""
    print(f"| decode | wall s | CPU s | tokens/s | speed-up{head} |\n|---|---|---|---|---|{'---|' if head else ''}")
    for name in ("eager", "compiled"):
        wall, cpu = warm[f"{name}_s"], warm[f"{name}_cpu_s"]
        step = f" | {wall / args.max_new_tokens * 1e3:.1f}" if args.ignore_eos else ""
        speedup = warm["eager_s"] / wall
        print(f"| {name} | {wall:.3f} | {cpu:.3f} | {warm['tokens'] / wall:.0f} | {speedup:.2f}x{step} |")
    print("\n| compile (first compiled call - steady state) | seconds | rollouts to break even |\n|---|---|---|")
    for name, res in (("cold (empty inductor cache)", cold), ("warm (inductor cache filled)", warm)):
        even = f"{res['compile_s'] / saved:.0f}" if saved > 0 else "never"
        print(f"| {name} | {res['compile_s']:.1f} | {even} |")
    print(f"\ngraphs compiled: {warm['graphs']} ({warm['forward_path']})")
    print(f"same tokens as eager: {warm['rows_same_tokens']} / {warm['rows']} rows; "
          f"max |logp difference| on them: {warm['logp_max_abs_diff']:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="demo")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=176)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ignore-eos", action="store_true", help="every response max_new_tokens long (vs_trl.py)")
    parser.add_argument("--buckets", action="store_true", help="static row/width buckets (CUDA's shapes) on the CPU")
    parser.add_argument("--child", choices=["cold", "warm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    argv = [a for a in sys.argv[1:]]
    with tempfile.TemporaryDirectory(prefix="openk1_inductor_") as cache:
        cold = run_child("cold", cache, argv)
        warm = run_child("warm", cache, argv)
    report(args, cold, warm)


if __name__ == "__main__":
    main()
