"""Rollout tokens/s of the tiny VLM with and without images (docs/vision.md "Rollouts, RL and eval
with images").

    .venv/bin/python benchmarks/vision_rollout.py [--prompts 32 --samples 4 --max-new-tokens 64 ...]

The same prompts twice: each with one image (`<image>` + 16 image tokens, its features from the
vision tower) and without (the marker removed), on the same engine (rollout/hf.py, HF's forward:
a VLM never takes the lean path), run alternately in one process; medians over repeats and their
ratio (this machine's timings vary run to run). The feature cache is cleared before every images
run, as after an RL update, so each run pays its vision-tower call. For reference, the text-only
tiny Llama of the same size on the lean and HF paths. The model is the demo-sized one, random.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from openk1.data.images import ImageRef, resolve_image
from openk1.models.io import PROCESSOR
from openk1.models.tiny import TinyModelConfig, char_tokenizer, tiny_llama
from openk1.models.vision import tiny_vlm
from openk1.rollout.engine import requests_for
from openk1.rollout.hf import HFEngine, SamplingConfig


def pictures(count: int, folder: Path) -> list[ImageRef]:
    """`count` random 40x36 PNGs."""
    refs = []
    for i in range(count):
        g = torch.Generator(device="cpu").manual_seed(i)
        pixels = torch.randint(0, 256, (36, 40, 3), generator=g, dtype=torch.uint8, device="cpu")
        Image.fromarray(pixels.numpy(), "RGB").save(folder / f"{i}.png")
        refs.append(resolve_image(f"{i}.png", folder, str(i)))
    return refs


def rate(engine: HFEngine, prompts: list[str], k: int, images: list[tuple[ImageRef, ...]] | None) -> float:
    """Generated tokens/s of one rollout (tokenization included, as in rl.rollout_phase)."""
    engine.features.clear()
    t0 = time.perf_counter()
    rollout = engine.sample(requests_for(engine.tokenizer, prompts, k, seed=0, images=images))
    return float(rollout.lengths.sum()) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = TinyModelConfig(hidden=128, layers=4, heads=4, kv_heads=4, intermediate=384)
    model, processor = tiny_vlm(size, char_tokenizer(), seed=0)
    tokenizer: Any = processor.tokenizer
    setattr(tokenizer, PROCESSOR, processor)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    engine = HFEngine(model.eval(), tokenizer, sampling)
    text_tokenizer = char_tokenizer()
    llama = tiny_llama(size, text_tokenizer, seed=0).eval()
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        refs = pictures(args.prompts, Path(folder))
        texts = [f"What is {i}+{2 * i + 1}? Look at the picture." for i in range(args.prompts)]
        marked = [f"<image>\n{t}" for t in texts]
        runs["vlm, images"] = lambda: rate(engine, marked, args.samples, [(r,) for r in refs])
        runs["vlm, no images"] = lambda: rate(engine, texts, args.samples, None)
        for lean in (True, False):
            text_engine = HFEngine(llama, text_tokenizer, sampling.model_copy(update={"lean": lean}))
            runs[f"text llama, {'lean' if lean else 'hf'}"] = (
                lambda e=text_engine: rate(e, texts, args.samples, None))
        for run in runs.values():
            run()                                                       # warm-up
        rates: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                rates[name].append(run())
    medians = {name: statistics.median(r) for name, r in rates.items()}
    print(f"{args.prompts} prompts x {args.samples} samples, max_new_tokens {args.max_new_tokens}, "
          f"batch {args.batch_size}, {args.threads} thread(s), medians of {args.repeats}")
    for name, value in medians.items():
        print(f"  {name:18s} {value:8.0f} tokens/s  ({' '.join(f'{r:.0f}' for r in rates[name])})")
    print(f"  images / no images: {medians['vlm, images'] / medians['vlm, no images']:.3f}")


if __name__ == "__main__":
    main()
