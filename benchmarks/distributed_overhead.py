"""Cost of the scale-out paths on this CPU machine, side by side in one run (medians, ratios).

    .venv/bin/python benchmarks/distributed_overhead.py [--iterations 4] [--sync-hidden 768]

1. Weight sync, seconds per GB of fp32 weights, for a Llama of ~0.17 GB (hidden 768, 6 layers):
   - in-process: state dict -> plain rollout copy (load_state_dict: fsdp.sync_weights, 1 rank)
   - FSDP2 gather on 2 gloo ranks: full_state_dict (all-gather of every shard) + load_state_dict
   - Ray: ray.put(state dict) + RolloutWorker.load_weights in an actor (stages/rl_ray.py)
2. RL iteration time on the demo model (hidden 128, 4 layers) and a demo-like config: one
   process, torchrun-style 2 gloo ranks, `--ray` (1 rollout + 1 reward actor); the median of
   the per-iteration rollout + reward + update time, first iteration excluded.
On 2 shared cores, 2 ranks cannot be faster than 1 process: the figures measure overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "distributed"))


def llama(hidden: int, layers: int) -> Any:
    from openk1.models.tiny import TinyModelConfig, char_tokenizer, tiny_llama

    size = TinyModelConfig(hidden=hidden, layers=layers, heads=max(hidden // 64, 1),
                           kv_heads=max(hidden // 64, 1), intermediate=hidden * 8 // 3)
    tokenizer = char_tokenizer()
    return tiny_llama(size, tokenizer, seed=0), tokenizer


def gigabytes(model: Any) -> float:
    return sum(p.numel() * p.element_size() for p in model.state_dict().values()) / 2**30


def median_time(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sync_in_process(hidden: int, layers: int, repeats: int) -> float:
    from openk1.distributed import fsdp

    model, _ = llama(hidden, layers)
    copy, _ = llama(hidden, layers)
    return median_time(lambda: copy.load_state_dict(fsdp.full_state_dict(model)), repeats) / gigabytes(model)


def _fsdp_sync(rank: int, hidden: int, layers: int, repeats: int, out: str) -> None:
    from openk1.distributed import fsdp

    model, _ = llama(hidden, layers)
    trainee = fsdp.sharded_copy(model)
    seconds = median_time(lambda: fsdp.sync_weights(trainee, model), repeats)
    if rank == 0:
        Path(out).write_text(json.dumps({"s_per_gb": seconds / gigabytes(model)}))


def sync_fsdp(hidden: int, layers: int, repeats: int) -> float:
    from spawn import run_ranks

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "fsdp.json")
        run_ranks(_fsdp_sync, 2, hidden, layers, repeats, out)
        return float(json.loads(Path(out).read_text())["s_per_gb"])


def sync_ray(hidden: int, layers: int, repeats: int, tmp: Path) -> float:
    import ray

    from openk1.distributed.settings import RaySettings
    from openk1.models.io import save_model
    from openk1.rollout.hf import SamplingConfig
    from openk1.stages.rl_ray import RolloutWorker, init_ray

    model, tokenizer = llama(hidden, layers)
    save_model(model, tokenizer, tmp / "sync_model")
    started = init_ray(RaySettings())
    try:
        worker = ray.remote(num_cpus=1)(RolloutWorker).remote("hf", str(tmp / "sync_model"),
                                                             SamplingConfig(), None, False)
        version = iter(range(1, 10_000))

        def push() -> None:
            state = {k: v.detach() for k, v in model.state_dict().items()}
            ray.get(worker.load_weights.remote(ray.put(state), next(version)))

        push()   # the actor's start-up is not part of a sync
        return median_time(push, repeats) / gigabytes(model)
    finally:
        if started:
            ray.shutdown()


def rl_values(model: str, data: str, out: str, iterations: int) -> dict[str, Any]:
    return {"model": model, "data": data, "out": out, "iterations": iterations,
            "prompts_per_iter": 16, "samples_per_prompt": 8, "micro_batch_size": 32,
            "eval_at_start": False, "checkpoint_every": 1000, "reset_optimizer": False,
            "sampling": {"max_new_tokens": 48}, "optim": {"lr": 1e-4, "warmup_steps": 0}}


def iteration_seconds(run_dir: Path) -> float:
    from openk1.report.run_dir import read_metrics

    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "time/update" in r][1:]
    return statistics.median(r["time/rollout"] + r["time/reward"] + r["time/update"] for r in rows)


def _rl_rank(rank: int, values: dict[str, Any]) -> None:
    from openk1.config import build
    from openk1.stages import rl

    rl.run(build(rl.RLConfig, values))


def rl_paths(tmp: Path, iterations: int) -> dict[str, float]:
    from spawn import run_ranks

    from openk1.config import build
    from openk1.data.io import write_jsonl
    from openk1.models.io import save_model
    from openk1.stages import rl, rl_ray

    model, tokenizer = llama(128, 4)
    save_model(model, tokenizer, tmp / "demo_model")
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "type": "math", "difficulty": 1}
            for a in range(10, 40) for b in range(1, 9)]
    write_jsonl(tmp / "rl.jsonl", rows)
    args = (str(tmp / "demo_model"), str(tmp / "rl.jsonl"))
    rl.run(build(rl.RLConfig, rl_values(*args, str(tmp / "one"), iterations)))
    run_ranks(_rl_rank, 2, rl_values(*args, str(tmp / "two"), iterations))
    rl_ray.run(build(rl.RLConfig, rl_values(*args, str(tmp / "ray"), iterations)))
    return {name: iteration_seconds(tmp / name) for name in ("one", "two", "ray")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--sync-hidden", type=int, default=768)
    parser.add_argument("--sync-layers", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)
    size = gigabytes(llama(args.sync_hidden, args.sync_layers)[0])
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        sync = {"in-process copy": sync_in_process(args.sync_hidden, args.sync_layers, args.repeats),
                "FSDP2 gather, 2 gloo ranks": sync_fsdp(args.sync_hidden, args.sync_layers, args.repeats),
                "Ray object store -> actor": sync_ray(args.sync_hidden, args.sync_layers, args.repeats, tmp)}
        iters = rl_paths(tmp, args.iterations)
    base = sync["in-process copy"]
    print(f"weight sync, model of {size:.3f} GB (median of {args.repeats})")
    print("| path | s per GB | vs in-process |\n|---|---|---|")
    for name, value in sync.items():
        print(f"| {name} | {value:.3f} | {value / base:.1f}x |")
    labels = {"one": "1 process", "two": "torchrun-style 2 gloo ranks (FSDP2)",
              "ray": "Ray: 1 rollout + 1 reward actor"}
    print(f"\nRL iteration (rollout + reward + update), median of iterations 2..{args.iterations}")
    print("| path | s per iteration | vs 1 process |\n|---|---|---|")
    for key, value in iters.items():
        print(f"| {labels[key]} | {value:.2f} | {value / iters['one']:.2f}x |")


if __name__ == "__main__":
    main()
