"""Each rollout and update optimisation of issue 9, measured on its own (same work, alternating).

    python benchmarks/lean_ab.py [--rounds 5] [--threads 1]

Rollout: 64 responses of 64 tokens (EOS ignored) from 8 addition prompts, the ~6M-parameter
tiny Llama of benchmarks/vs_trl.py, one HFEngine.generate call per variant per round:
  hf fp32            HF forward + DynamicCache (sampling.lean: false), fp32
  lean fp32          models/lean.py static-cache decoder, fp32
  hf autocast bf16   HF forward under torch.autocast(bfloat16) (what TRL's bf16 does)
  lean bf16 plain    the lean decoder in bf16, weights not reordered
  lean bf16          + weights reordered once for oneDNN (the default for bf16)
Update: forward + backward of response log-probs for 32 sequences (6-7 prompt + 64 response
tokens), the RL update's micro-batch:
  hf fp32 / lean fp32 (the default) / hf autocast bf16 / lean bf16 (precision: bf16).
Prints medians of wall seconds and the ratio to the first variant of each table.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Any

import torch
from vs_trl import _NoEOS  # benchmarks/ is on sys.path when this script runs


def model_and_tokenizer() -> tuple[Any, Any]:
    from openk1.models.tiny import TinyModelConfig, char_tokenizer, tiny_llama

    tokenizer = char_tokenizer()
    size = TinyModelConfig(hidden=256, layers=7, heads=8, kv_heads=8, intermediate=768)
    return tiny_llama(size, tokenizer, seed=0), tokenizer


def rollout_variants(model: Any, tokenizer: Any) -> dict[str, Any]:
    from openk1.models import lean
    from openk1.rollout.hf import HFEngine, SamplingConfig

    prompts = [f"{a}+{b}=" for a, b in [(12, 34), (5, 6), (77, 8), (1, 22), (9, 90), (41, 7), (3, 3), (60, 15)]]

    def run(use_lean: bool, dtype: Any, autocast: bool = False, pack: bool = True) -> Any:
        sampling = SamplingConfig(max_new_tokens=64, batch_size=64, lean=use_lean)
        engine = HFEngine(model, _NoEOS(tokenizer), sampling, dtype)

        def go(seed: int) -> None:
            packable = lean._packable
            if not pack:
                lean._packable = lambda *a: False   # type: ignore[assignment]
            context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
            try:
                with context:
                    engine.generate(prompts, 8, seed)
            finally:
                lean._packable = packable
        return go

    return {"hf fp32": run(False, None), "lean fp32": run(True, None),
            "hf autocast bf16": run(False, None, autocast=True),
            "lean bf16 plain": run(True, torch.bfloat16, pack=False), "lean bf16": run(True, torch.bfloat16)}


def update_variants(model: Any) -> dict[str, Any]:
    from openk1.models import forward

    g = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(5, 100, (32, 7), generator=g)
    prompt_mask = torch.ones(32, 7, dtype=torch.long)
    prompt_mask[::2, 0] = 0                                  # 6- and 7-token prompts, left-padded
    response_ids = torch.randint(5, 100, (32, 64), generator=g)
    action_mask = torch.ones(32, 64, dtype=torch.long)
    args = (model, prompt_ids, prompt_mask, response_ids, action_mask)

    def run(dtype: Any, lean: bool, autocast: bool = False) -> Any:
        def go(seed: int) -> None:
            context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
            with context:
                logp = forward.response_logprobs(*args, dtype=dtype, lean=lean)
            logp.sum().backward()
            model.zero_grad(set_to_none=True)
        return go

    return {"hf fp32": run(None, False), "lean fp32": run(None, True),
            "hf autocast bf16": run(None, False, autocast=True), "lean bf16": run(torch.bfloat16, True)}


def measure(variants: dict[str, Any], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds + 1):                      # round 0 warms up
        names = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for name in names:
            t0 = time.perf_counter()
            variants[name](r)
            if r:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def table(title: str, medians: dict[str, float], tokens: int) -> None:
    first = next(iter(medians.values()))
    print(f"\n{title}\n\n| variant | seconds | tokens/s | speed-up |\n|---|---|---|---|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.3f} | {tokens / seconds:.0f} | {first / seconds:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = model_and_tokenizer()
    table(f"Rollout: 64 responses x 64 tokens, median of {args.rounds} ({args.threads} thread(s))",
          measure(rollout_variants(model, tokenizer), args.rounds), 64 * 64)
    model.train()
    table(f"Update micro-batch: forward + backward, 32 x (6.5 + 64) tokens, median of {args.rounds}",
          measure(update_variants(model), args.rounds), 32 * 64)


if __name__ == "__main__":
    main()
