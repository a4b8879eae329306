"""openk1's RL iteration vs TRL's GRPOTrainer at equal work, plus this CPU's matmul peak.

    python benchmarks/vs_trl.py [--quick] [--precision bf16|fp32] [--iterations 5]   # throughput
    python benchmarks/vs_trl.py --time-to-accuracy [--iterations 16] [--eval-every 1]
    python benchmarks/vs_trl.py --update-ab [--iterations 5]   # the RL update before/after

TRL (`pip install -e .[bench]`) is needed by this script only, never by openk1.
Timing on a shared machine: both frameworks run one iteration each in turn (one process
computes at a time) and the table gives medians; CPU seconds (time.process_time) are given
next to wall seconds because they move far less when other processes load the cores.

One ~6M-parameter tiny Llama (openk1's `tiny_llama`, hidden 256, 7 layers, character tokenizer)
is saved once; each framework loads it in its own subprocess (so each peak RSS is its own) and
the two run one RL iteration each in turn, alternating which goes first, after a warm-up.
Equal work per iteration, forced:
  - the same prompts x samples (synthetic addition), the same max completion length, and EOS is
    ignored on both sides (TRL: `min_new_tokens` = max; openk1: a tokenizer view whose EOS id
    matches no token), so every response is exactly `max_new_tokens` long;
  - one optimizer step per generation over the whole batch (TRL: num_iterations 1, steps per
    generation = gradient accumulation steps; openk1: 1 mini-batch x 1 epoch), the same
    micro-batch, AdamW with the same betas, lr and clipping, the same precision (bf16 mixed
    precision by default: TRL's GRPOConfig defaults to bf16=True; `--precision fp32` turns it
    off on both sides), no gradient checkpointing,
    no vLLM, beta 0 (no reference model), the same reward (openk1's math verifier);
  - the same torch thread count in both.
Tokens are counted from what each framework actually generated and trained.

FLOP utilisation: against this CPU's measured fp32 matmul peak (torch.mm, always measured: the
reference of the >= 50% target) and, in bf16 runs, against the bf16 (AMX) peak too. Matmul
FLOPs only: 2 N per token forward, 6 N forward+backward, with N the parameters used in matmuls
(every layer's projections plus the tied LM head; the embedding lookup is not a matmul), plus
attention's QK^T and AV (4 d L per token per layer forward, L the mean attended length; x3 for
forward+backward).
The update's rows count every processed token (prompt and response: the usual MFU) and, as a
lower bound, the trained (response) tokens only.

The last line is `speedup_vs_trl: X`, the ratio of median per-iteration wall times (= ratio of
end-to-end tokens/s, since the work is equal).

--time-to-accuracy: from the demo's SFT model, openk1's RL as the demo preset runs it and TRL's
GRPO with its recommended (default) settings at the same batch (`accuracy_trl_config`), held-out
accuracy (openk1's evaluate, the demo's settings, evaluation time excluded) against cumulative
training seconds; prints the time each takes to reach TRL's final accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PREFIX = "@@bench "


# ----------------------------------------------------------------------------- setup


def settings(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        base = {"prompts": 8, "k": 8, "max_new_tokens": 64, "micro_batch": 32, "iterations": 3, "warmup": 1,
                "hidden": 256, "layers": 7}
    else:
        base = {"prompts": 16, "k": 8, "max_new_tokens": 128, "micro_batch": 64, "iterations": 5, "warmup": 1,
                "hidden": 256, "layers": 7}
    if args.iterations:
        base["iterations"] = args.iterations
    base |= {"mode": "throughput", "threads": args.threads, "lr": 1e-5, "seed": args.seed, "precision": args.precision,
             "compile": args.compile}
    return base


def build_model(root: Path, cfg: dict[str, Any]) -> tuple[str, int]:
    """Save the ~6M-parameter tiny Llama; returns (model dir, parameter count)."""
    from openk1.models.io import save_model
    from openk1.models.tiny import TinyModelConfig, char_tokenizer, tiny_llama

    tokenizer = char_tokenizer()
    size = TinyModelConfig(hidden=cfg["hidden"], layers=cfg["layers"], heads=8, kv_heads=8,
                           intermediate=3 * cfg["hidden"])
    model = tiny_llama(size, tokenizer, seed=cfg["seed"])
    path = root / "model"
    save_model(model, tokenizer, path)
    return str(path), sum(p.numel() for p in model.parameters())


def build_prompts(root: Path, n: int, seed: int) -> str:
    """n addition problems (difficulty 1-2) as openk1 dataset rows."""
    from openk1.data.io import write_jsonl
    from openk1.data.synthetic import make_row

    rng = random.Random(seed)
    rows = [make_row(rng, 1 + i % 2, f"bench-{i}", 0.0) for i in range(n)]
    path = root / "prompts.jsonl"
    write_jsonl(path, rows)
    return str(path)


def mean_prompt_tokens(data: str, model: str) -> float:
    """Mean prompt length in tokens (with the tokenizer's special tokens), over the prompt file."""
    from transformers import AutoTokenizer

    from openk1.data.io import load_problems
    from openk1.models.forward import tokenize

    prompts = [p.prompt for p in load_problems(data)]
    return statistics.mean(len(ids) for ids in tokenize(AutoTokenizer.from_pretrained(model), prompts))


def matmul_peak(threads: int, n: int, repeats: int, precision: str = "fp32") -> tuple[float, float]:
    """Median GFLOP/s of torch.mm on n x n matrices (2 n^3 FLOPs each; fp32, or bf16 for the
    bf16 runs: AMX on this CPU), per wall second and per CPU second (the latter barely moves
    when other processes share the cores)."""
    import torch

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        torch.mm(a, b)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return 2 * n**3 / statistics.median(wall) / 1e9, 2 * n**3 / statistics.median(cpu) / 1e9


# ----------------------------------------------------------------------------- workers


def rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB, from /proc/self/status."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":")
            fields[key] = int(value.split()[0]) / 1024
    if not fields:  # not Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak
    return fields["VmRSS"], fields["VmHWM"]


def report(payload: dict[str, Any]) -> None:
    print(PREFIX + json.dumps(payload), flush=True)


def wait_for_go(evaluate: Any = None) -> bool:
    """Block until the parent says `go` (True) or `stop` (False); `eval` runs `evaluate` first."""
    while True:
        command = sys.stdin.readline().strip()
        if command == "eval" and evaluate is not None:
            t0 = time.perf_counter()
            report(evaluate() | {"eval_seconds": time.perf_counter() - t0})
            continue
        return command == "go"


def held_out_evaluator(model: Any, tokenizer: Any, spec: dict[str, Any]) -> Any:
    """Held-out accuracy with openk1's evaluate (the demo's settings), the same for both frameworks."""
    from openk1.data.io import load_problems
    from openk1.stages.demo import preset
    from openk1.stages.eval import EvalSettings, evaluate

    problems = load_problems(spec["eval_data"])
    settings = EvalSettings(**preset(quick=False)["eval"] | {"samples_per_prompt": spec["eval_samples"]})
    return lambda: {"accuracy": evaluate(model, tokenizer, problems, settings)["accuracy"]}


class _NoEOS:
    """A tokenizer view whose EOS id matches no token: every response runs to max_new_tokens."""

    eos_token_id = -1

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def openk1_worker(spec: dict[str, Any]) -> None:
    import torch

    from openk1.cli import quiet_libraries
    from openk1.config import build
    from openk1.data.io import load_problems
    from openk1.data.samplers import make_sampler
    from openk1.memory import keep_freed_memory
    from openk1.models.forward import PRECISIONS
    from openk1.models.io import load_model
    from openk1.optim import make_optimizer
    from openk1.rollout.hf import HFEngine
    from openk1.rollout.partial import ReplayBuffer
    from openk1.stages import rl

    quiet_libraries()
    keep_freed_memory()   # as `openk1` does at start (openk1/memory.py)
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    B = spec["prompts"] * spec["k"]
    accuracy_mode = spec["mode"] == "accuracy"
    common = {"model": spec["model"], "data": spec["data"], "out": spec["out"], "seed": spec["seed"]}
    if accuracy_mode:  # the demo's RL preset, as `openk1 demo` runs it
        from openk1.config import merge
        from openk1.stages.demo import preset

        values = merge(preset(quick=False)["rl"], common | {"precision": spec["precision"],
                                                            "compile": spec["compile"]})
        values = merge(values, {"optim": {"fused": True}})   # as TRL's Trainer
        if spec.get("core_rl"):   # the OPMD core only: uniform sampler, whole rollouts, no length penalty
            values = merge(values, {"sampler": {"kind": "uniform"}, "partial": {"enabled": False},
                                    "length_penalty_weight": 0.0})
        cfg = build(rl.RLConfig, values)
        report({"config": {k: v for k, v in cfg.model_dump().items()
                           if k in ("sampler", "partial", "length_penalty_weight", "tau", "optim",
                                    "minibatches_per_iter", "epochs_per_iter", "reset_optimizer")}})
    else:
        cfg = build(rl.RLConfig, common | {
            "prompts_per_iter": spec["prompts"], "samples_per_prompt": spec["k"], "tau": 0.5,
            "minibatches_per_iter": 1, "epochs_per_iter": 1, "micro_batch_size": spec["micro_batch"],
            "reset_optimizer": False, "precision": spec["precision"], "compile": spec["compile"],
            "optim": {"lr": spec["lr"], "warmup_steps": 0, "betas": [0.9, 0.95], "grad_clip": 1.0,
                      "fused": True},   # transformers' Trainer (TRL) defaults to adamw_torch_fused
            "sampling": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": spec["max_new_tokens"],
                         "batch_size": B},
        })
    B = cfg.prompts_per_iter * cfg.samples_per_prompt
    problems = load_problems(cfg.data)
    model, tokenizer = load_model(cfg.model)
    optimizer = make_optimizer(model, cfg.optim)
    sampler = make_sampler(cfg.sampler, problems, cfg.seed)
    buffer = ReplayBuffer()
    engine = HFEngine(model, tokenizer if accuracy_mode else _NoEOS(tokenizer), cfg.sampling,
                      PRECISIONS[cfg.precision])
    evaluate = held_out_evaluator(model, tokenizer, spec) if accuracy_mode else None
    cpu = {"update": 0.0}
    plain_update = rl.update

    def timed_update(*a: Any, **kw: Any) -> Any:  # CPU seconds of the update (wall is in metrics)
        c0 = time.process_time()
        out = plain_update(*a, **kw)
        cpu["update"] += time.process_time() - c0
        return out

    rl.update = timed_update  # type: ignore[assignment]
    report({"ready": True, "rss_mib": rss_mib()[0]})
    iteration = 0
    while wait_for_go(evaluate):
        reset_peak_rss()   # the peak of this iteration, not of set-up
        t0, c0, cpu["update"] = time.perf_counter(), time.process_time(), 0.0
        metrics = rl._iteration(model, optimizer, engine, sampler, buffer, problems, cfg, iteration)
        seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        generated = metrics["throughput/generated_tokens_per_s"] * metrics["time/rollout"]
        trained = metrics.get("response_tokens/mean", 0.0) * B   # 0: partial rollouts trained nothing
        rss, peak = rss_mib()
        report({"seconds": seconds, "cpu_s": cpu_s, "update_cpu_s": cpu["update"],
                "rollout_cpu_s": cpu_s - cpu["update"],
                "rollout_s": metrics["time/rollout"] + metrics.get("time/reward", 0.0),
                "update_s": metrics.get("time/update", 0.0), "generated_tokens": generated, "trained_tokens": trained,
                "rss_mib": rss, "peak_rss_mib": peak})
        iteration += 1


def trl_worker(spec: dict[str, Any]) -> None:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from openk1.cli import quiet_libraries
    from openk1.data.io import load_problems
    from openk1.models.io import load_model
    from openk1.rewards.math import verify_math
    from openk1.types import Problem

    quiet_libraries()
    torch.set_num_threads(spec["threads"])
    problems = load_problems(spec["data"])
    dataset = Dataset.from_list([{"prompt": p.prompt, "answer": p.answer} for p in problems])
    counts = {"generated": 0}

    def math_reward(completions: list[str], answer: list[str], completion_ids: list[list[int]],
                    **_: Any) -> list[float]:
        counts["generated"] += sum(len(c) for c in completion_ids)
        return [verify_math(c, Problem(prompt="", answer=a)).reward for c, a in zip(completions, answer)]

    B, mb = spec["prompts"] * spec["k"], spec["micro_batch"]
    steps = spec["warmup"] + spec["iterations"]
    model, tokenizer = load_model(spec["model"])
    evaluate = None
    if spec["mode"] == "accuracy":
        evaluate = held_out_evaluator(model, tokenizer, spec)
        args = accuracy_trl_config(GRPOConfig, spec)
    else:
        args = throughput_trl_config(GRPOConfig, spec, B, mb, steps)
    trainer = GRPOTrainer(model=model, reward_funcs=math_reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer)
    timing = {"go": 0.0, "cpu": 0.0, "rollout": 0.0, "rollout_cpu": 0.0}
    generate = trainer._generate_and_score_completions

    def timed_generate(*a: Any, **kw: Any) -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        out = generate(*a, **kw)
        timing["rollout"] += time.perf_counter() - t0
        timing["rollout_cpu"] += time.process_time() - c0
        return out

    trainer._generate_and_score_completions = timed_generate  # type: ignore[method-assign]

    class Alternate(TrainerCallback):
        """Blocks before each optimizer step's work until the parent says go; reports after."""

        def on_train_begin(self, *a: Any, **kw: Any) -> None:
            report({"ready": True, "rss_mib": rss_mib()[0]})
            if not wait_for_go(evaluate):
                raise SystemExit(0)
            reset_peak_rss()
            timing["go"], timing["cpu"] = time.perf_counter(), time.process_time()
            timing["rollout"], timing["rollout_cpu"], counts["generated"] = 0.0, 0.0, 0

        def on_step_end(self, *a: Any, **kw: Any) -> None:
            seconds, cpu = time.perf_counter() - timing["go"], time.process_time() - timing["cpu"]
            rss, peak = rss_mib()
            report({"seconds": seconds, "cpu_s": cpu, "rollout_cpu_s": timing["rollout_cpu"],
                    "update_cpu_s": cpu - timing["rollout_cpu"], "rollout_s": timing["rollout"],
                    "update_s": seconds - timing["rollout"],
                    "generated_tokens": counts["generated"], "trained_tokens": counts["generated"],
                    "rss_mib": rss, "peak_rss_mib": peak})
            if not wait_for_go(evaluate):
                raise SystemExit(0)
            reset_peak_rss()
            timing["go"], timing["cpu"] = time.perf_counter(), time.process_time()
            timing["rollout"], timing["rollout_cpu"], counts["generated"] = 0.0, 0.0, 0

    trainer.add_callback(Alternate())
    trainer.train()
    while wait_for_go(evaluate):  # the parent asked for more iterations than max_steps
        report({"error": "no more steps"})


def throughput_trl_config(config_class: Any, spec: dict[str, Any], B: int, mb: int, steps: int) -> Any:
    """Equal work with openk1's side: one optimizer step per generation, EOS ignored."""
    return config_class(
        output_dir=spec["out"], use_cpu=True, bf16=spec["precision"] == "bf16", fp16=False,
        gradient_checkpointing=False, per_device_train_batch_size=mb, gradient_accumulation_steps=B // mb,
        num_generations=spec["k"],
        max_completion_length=spec["max_new_tokens"], num_iterations=1, beta=0.0, use_vllm=False,
        temperature=1.0, top_p=1.0, learning_rate=spec["lr"], lr_scheduler_type="constant",
        warmup_steps=0, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0, max_grad_norm=1.0,
        max_steps=steps, logging_steps=10**6, save_strategy="no", report_to="none", seed=spec["seed"],
        disable_dropout=True, dataloader_num_workers=0, log_completions=False,
        generation_kwargs={"min_new_tokens": spec["max_new_tokens"]},
    )


def accuracy_trl_config(config_class: Any, spec: dict[str, Any]) -> Any:
    """TRL's recommended GRPO (its defaults: DAPO token-level loss, group-scaled advantages, clip 0.2,
    beta 0, one update per generation, AdamW (0.9, 0.999), linear decay) at the demo's batch:
    32 prompts x 8 samples, 100 new tokens, temperature 1, lr 1e-4 (the demo's; TRL's default 1e-6 is
    sized for billion-parameter models). CPU, no gradient checkpointing, no vLLM; bf16 mixed
    precision (TRL's default) with --precision bf16, else fp32."""
    return config_class(
        output_dir=spec["out"], use_cpu=True, bf16=spec["precision"] == "bf16", fp16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=64, gradient_accumulation_steps=4, num_generations=8,
        max_completion_length=100, learning_rate=1e-4, max_steps=spec["iterations"],
        logging_steps=10**6, save_strategy="no", report_to="none", seed=spec["seed"],
        dataloader_num_workers=0, log_completions=False,
    )


WORKERS = {"openk1": openk1_worker, "trl": trl_worker}


# ----------------------------------------------------------------------------- parent


class Worker:
    def __init__(self, name: str, spec: dict[str, Any], env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", name, "--spec", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ready = self.read()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                return dict(json.loads(line[len(PREFIX):]))
        raise RuntimeError(f"{self.name} worker exited (code {self.proc.wait()})")

    def step(self, command: str = "go") -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def alternate(spec: dict[str, Any], env: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Warm-up + iterations of both frameworks, one iteration each in turn."""
    workers = {name: Worker(name, spec | {"out": str(Path(spec["root"]) / name)}, env) for name in WORKERS}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in WORKERS}
    try:
        for i in range(spec["warmup"] + spec["iterations"]):
            order = list(WORKERS) if i % 2 == 0 else list(WORKERS)[::-1]
            for name in order:
                row = workers[name].step()
                if "error" in row:
                    raise RuntimeError(f"{name}: {row['error']}")
                row["setup_rss_mib"] = workers[name].ready["rss_mib"]
                if i >= spec["warmup"]:
                    rows[name].append(row)
                print(f"  iter {i} {name:6s} {row['seconds']:.2f}s "
                      f"(rollout {row['rollout_s']:.2f}, update {row['update_s']:.2f})", flush=True)
    finally:
        for w in workers.values():
            w.close()
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("seconds", "cpu_s", "rollout_cpu_s", "update_cpu_s", "rollout_s", "update_s",
            "generated_tokens", "trained_tokens")
    med = {k: statistics.median(r[k] for r in rows) for k in keys if k in rows[0]}
    return med | {
        "gen_tok_s": statistics.median(r["generated_tokens"] / r["rollout_s"] for r in rows),
        "train_tok_s": statistics.median(r["trained_tokens"] / r["update_s"] for r in rows),
        "iter_tok_s": statistics.median(r["generated_tokens"] / r["seconds"] for r in rows),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in rows),
        "setup_rss_mib": rows[0]["setup_rss_mib"],
    }


def flops_per_token(params_matmul: int, layers: int, hidden: int, context: float) -> float:
    """Forward matmul FLOPs per token: 2 N + attention 4 d L per layer."""
    return 2 * params_matmul + 4 * layers * hidden * context


ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")   # what the CPU kernels key on


def machine() -> str:
    """The CPU model, the ISA features among ISA_FLAGS it reports, and the kernel set torch chose
    (so that every figure carries its machine: Intel with AMX, AMD with AVX-512 BF16, ...)."""
    import torch

    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    found = ", ".join(f for f in ISA_FLAGS if f in flags) or "none of " + "/".join(ISA_FLAGS)
    return f"{model}; ISA: {found}; torch kernels: {torch.backends.cpu.get_cpu_capability()}"


def print_table(spec: dict[str, Any], res: dict[str, dict[str, float]],
                peaks: dict[str, tuple[float, float]], params: int) -> float:
    o, t = res["openk1"], res["trl"]
    print(f"\nmachine: {machine()}")
    P = spec["prompts"] * spec["k"]
    T = spec["max_new_tokens"]
    print(f"\n{spec['prompts']} prompts x {spec['k']} samples = {P} responses of {T} tokens, "
          f"micro-batch {spec['micro_batch']}, 1 optimizer step per iteration, {params / 1e6:.2f}M parameters, "
          f"{spec['threads']} threads; medians of {spec['iterations']} alternating iterations after "
          f"{spec['warmup']} warm-up; precision {spec['precision']} on both sides "
          f"(TRL bf16={spec['precision'] == 'bf16'}), "
          f"openk1 compile: {str(spec['compile']).lower()}\n")
    print("| | openk1 | TRL GRPOTrainer | openk1 / TRL |\n|---|---|---|---|")

    def line(name: str, a: float, b: float, fmt: str, ratio: float) -> None:
        print(f"| {name} | {a:{fmt}} | {b:{fmt}} | {ratio:.2f}x |")

    line("iteration wall time (s)", o["seconds"], t["seconds"], ".2f", t["seconds"] / o["seconds"])
    line("iteration CPU time (s)", o["cpu_s"], t["cpu_s"], ".2f", t["cpu_s"] / o["cpu_s"])
    line("  rollout + reward (s)", o["rollout_s"], t["rollout_s"], ".2f", t["rollout_s"] / o["rollout_s"])
    line("  update (s)", o["update_s"], t["update_s"], ".2f", t["update_s"] / o["update_s"])
    line("  rollout + reward CPU (s)", o["rollout_cpu_s"], t["rollout_cpu_s"], ".2f",
         t["rollout_cpu_s"] / o["rollout_cpu_s"])
    line("  update CPU (s)", o["update_cpu_s"], t["update_cpu_s"], ".2f", t["update_cpu_s"] / o["update_cpu_s"])
    line("generated tokens / iteration", o["generated_tokens"], t["generated_tokens"], ".0f",
         o["generated_tokens"] / max(t["generated_tokens"], 1))
    line("generated tokens/s (rollout)", o["gen_tok_s"], t["gen_tok_s"], ".0f", o["gen_tok_s"] / t["gen_tok_s"])
    line("trained tokens/s (update)", o["train_tok_s"], t["train_tok_s"], ".0f", o["train_tok_s"] / t["train_tok_s"])
    line("end-to-end tokens/s", o["iter_tok_s"], t["iter_tok_s"], ".0f", o["iter_tok_s"] / t["iter_tok_s"])
    line("peak RSS in an iteration (MiB)", o["peak_rss_mib"], t["peak_rss_mib"], ".0f",
         o["peak_rss_mib"] / t["peak_rss_mib"])
    line("  above RSS after set-up (MiB)", o["peak_rss_mib"] - o["setup_rss_mib"],
         t["peak_rss_mib"] - t["setup_rss_mib"], ".0f",
         (o["peak_rss_mib"] - o["setup_rss_mib"]) / max(t["peak_rss_mib"] - t["setup_rss_mib"], 1e-9))
    # FLOP utilisation of openk1 (and TRL, for reference)
    n, L, d, P_len = params, spec["layers"], spec["hidden"], spec["prompt_tokens"]
    S = P_len + T                                               # tokens per sequence in the update
    update_flops = 3 * (2 * n * S + 4 * L * d * S * S / 2)      # forward + backward per sequence
    rollout_flops = T * flops_per_token(n, L, d, P_len + T / 2)  # per response (decode steps)
    for precision, (wall, cpu) in peaks.items():
        print(f"\nmatmul peak (torch.mm {spec['matmul_n']}^2 {precision}, {spec['threads']} thread(s), median of 7, "
              f"best of before/after the runs): {wall:.1f} GFLOP/s per wall second, {cpu:.1f} per CPU second")
    print(f"\nMatmul FLOPs only (2N per token forward, 6N forward + backward, N = {n / 1e6:.2f}M; attention "
          f"QK^T and AV over the causal half). The update processes {P_len:.1f} prompt + {T} response "
          f"tokens per sequence: the first row counts all of them (the usual MFU), the second only the "
          f"response tokens (a lower bound). Utilisation is of the peak of the run's precision "
          f"({spec['precision']}){'' if spec['precision'] == 'fp32' else '; the last columns, of the fp32 peak'}.\n")
    # every response is exactly T tokens here, so trained tokens / T = sequences trained
    rows = (("update, all processed tokens", update_flops / T, "update_s", "update_cpu_s"),
            ("update, response tokens only", update_flops / S, "update_s", "update_cpu_s"),
            ("rollout, generated tokens", rollout_flops / T, "rollout_s", "rollout_cpu_s"))
    own = peaks[spec["precision"]]
    extra = [] if spec["precision"] == "fp32" else ["fp32"]
    print("| FLOP utilisation (wall / CPU time) | openk1 | TRL |"
          + "".join(f" openk1, of the {p} peak (CPU) | TRL, of the {p} peak (CPU) |" for p in extra))
    print("|---|---|---|" + "---|---|" * len(extra))
    for name, per_token, wall, cpu in rows:
        flops = [r["trained_tokens" if "update" in name else "generated_tokens"] * per_token / 1e9 for r in (o, t)]
        cells = [f"{100 * f / r[wall] / own[0]:.0f}% / {100 * f / r[cpu] / own[1]:.0f}% ({f / r[cpu]:.1f} GFLOP "
                 f"per CPU s)" for f, r in zip(flops, (o, t))]
        cells += [f"{100 * f / r[cpu] / peaks[p][1]:.0f}%" for p in extra for f, r in zip(flops, (o, t))]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return t["seconds"] / o["seconds"]


# ----------------------------------------------------------------------------- update A/B


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


UPDATE_VARIANTS = ("before", "+response-only LM head", "+length-sorted micro-batches")


def update_ab_worker(spec: dict[str, Any]) -> None:
    """The demo's update (2 mini-batches x 2 epochs, micro-batch 64) on one real rollout of the
    demo's SFT model (EOS on: lengths vary), each variant in turn; CPU s and peak RSS growth."""
    import torch

    from openk1.cli import quiet_libraries
    from openk1.config import build, merge
    from openk1.data.io import load_problems
    from openk1.models import forward
    from openk1.models.io import load_model
    from openk1.optim import make_optimizer
    from openk1.rollout.hf import HFEngine
    from openk1.stages import rl
    from openk1.stages.demo import preset

    quiet_libraries()
    torch.set_num_threads(spec["threads"])
    cfg = build(rl.RLConfig, merge(preset(quick=False)["rl"], {"model": spec["model"], "data": spec["data"],
                                                              "out": "unused"}))
    model, tokenizer = load_model(cfg.model)
    problems = load_problems(cfg.data)[:cfg.prompts_per_iter]
    rollout = HFEngine(model, tokenizer, cfg.sampling).generate([p.prompt for p in problems],
                                                                cfg.samples_per_prompt, seed=0)
    advantages = torch.randn(rollout.response_ids.shape[0], generator=torch.Generator().manual_seed(0))
    optimizer = make_optimizer(model, cfg.optim)
    plain_accepts, plain_by_length = forward._accepts, rl.by_length
    rows: dict[str, list[tuple[float, float]]] = {v: [] for v in UPDATE_VARIANTS}
    for round_ in range(spec["rounds"] + 1):
        order = UPDATE_VARIANTS if round_ % 2 == 0 else UPDATE_VARIANTS[::-1]
        for variant in order:
            level = UPDATE_VARIANTS.index(variant)
            forward._accepts = plain_accepts if level >= 1 else (lambda model, name: False)
            rl.by_length = plain_by_length if level >= 2 else (lambda index, rollout: index)
            reset_peak_rss()
            base = rss_mib()[0]
            c0 = time.process_time()
            rl.update(model, optimizer, rollout, advantages, cfg, torch.Generator().manual_seed(round_))
            if round_:  # round 0 is a warm-up
                rows[variant].append((time.process_time() - c0, rss_mib()[1] - base))
    forward._accepts, rl.by_length = plain_accepts, plain_by_length
    report({"rows": rows, "tokens": float(rollout.action_mask.sum()),
            "lengths": [float(x) for x in rollout.lengths.float().quantile(torch.tensor([0.1, 0.5, 0.9]))]})


def update_ab(args: argparse.Namespace, env: dict[str, str]) -> None:
    spec = {"model": args.model, "data": args.data, "threads": args.threads, "rounds": args.iterations or 5}
    worker = Worker("update-ab", spec, env)
    result = worker.ready
    worker.close()
    tokens = result["tokens"]
    print(f"\nRL update of the demo config (4 optimizer steps over 256 responses, micro-batch 64, "
          f"{tokens:.0f} response tokens, lengths p10/p50/p90 {'/'.join(f'{x:.0f}' for x in result['lengths'])}), "
          f"median of {spec['rounds']} alternating rounds, {args.threads} thread(s)\n")
    print("| update variant | CPU s | trained tokens/s (CPU) | peak RSS growth (MiB) |\n|---|---|---|---|")
    for variant in UPDATE_VARIANTS:
        cpu = statistics.median(r[0] for r in result["rows"][variant])
        mem = max(r[1] for r in result["rows"][variant])
        print(f"| {variant} | {cpu:.2f} | {2 * tokens / cpu:.0f} | {mem:.0f} |")


# ----------------------------------------------------------------------------- time to accuracy


def time_to_accuracy(args: argparse.Namespace, env: dict[str, str]) -> None:
    """Both frameworks from the demo's SFT model, alternating iterations; held-out accuracy every
    `eval_every` iterations (evaluation time excluded); training seconds = wall time of the
    iterations (rollout + reward + update)."""
    root = Path(tempfile.mkdtemp(prefix="openk1-vs-trl-acc-"))
    spec = {"mode": "accuracy", "model": args.model, "data": args.data, "eval_data": args.eval_data,
            "threads": args.threads, "seed": args.seed, "iterations": args.iterations or 20, "warmup": 0,
            "eval_samples": args.eval_samples, "core_rl": args.core_rl, "precision": args.precision,
            "compile": args.compile,
            "prompts": 32, "k": 8, "micro_batch": 64, "max_new_tokens": 100, "lr": 1e-4}
    workers = {name: Worker(name, spec | {"out": str(root / name)}, env) for name in WORKERS}
    print(f"openk1 RL settings: {workers['openk1'].ready['config']}", flush=True)
    workers["openk1"].ready = workers["openk1"].read()
    curves: dict[str, list[tuple[int, float, float, float]]] = {name: [] for name in WORKERS}
    elapsed = {name: [0.0, 0.0] for name in WORKERS}  # wall, CPU
    try:
        for it in range(spec["iterations"] + 1):
            order = list(WORKERS) if it % 2 == 0 else list(WORKERS)[::-1]
            if it % args.eval_every == 0 or it == spec["iterations"]:
                for name in order:
                    acc = workers[name].step("eval")["accuracy"]
                    curves[name].append((it, elapsed[name][0], elapsed[name][1], acc))
                    print(f"  iter {it:2d} {name:6s} train {elapsed[name][0]:7.1f} s wall "
                          f"{elapsed[name][1]:7.1f} s CPU  held-out accuracy {100 * acc:.1f}%", flush=True)
            if it == spec["iterations"]:
                break
            for name in order:
                row = workers[name].step()
                elapsed[name][0] += row["seconds"]
                elapsed[name][1] += row["cpu_s"]
    finally:
        for w in workers.values():
            w.close()
    (root / "curves.json").write_text(json.dumps(curves | {"seed": spec["seed"]}))
    print_accuracy(spec, curves)
    plot_accuracy({f"seed {spec['seed']}": curves}, root / "curves.png")
    print(f"\nraw curves: {root / 'curves.json'}, plotted: {root / 'curves.png'}")


def first_reaching(curve: list[tuple[int, float, float, float]], target: float) -> tuple[int, float, float] | None:
    for it, wall, cpu, acc in curve:
        if acc >= target - 1e-9:
            return it, wall, cpu
    return None


def print_accuracy(spec: dict[str, Any], curves: dict[str, list[tuple[int, float, float, float]]]) -> None:
    print(f"\nHeld-out accuracy (200 problems x {spec['eval_samples']} samples, openk1's verifier) vs training "
          f"seconds, from the "
          f"same SFT model, {spec['iterations']} iterations of 32 prompts x 8 samples each, "
          f"{spec['threads']} thread(s), alternating\n")
    print("| iteration | openk1 s (wall / CPU) | openk1 accuracy | TRL s (wall / CPU) | TRL accuracy |")
    print("|---|---|---|---|---|")
    for (it, ow, oc, oa), (_, tw, tc, ta) in zip(curves["openk1"], curves["trl"]):
        print(f"| {it} | {ow:.1f} / {oc:.1f} | {100 * oa:.1f}% | {tw:.1f} / {tc:.1f} | {100 * ta:.1f}% |")
    target = curves["trl"][-1][3]
    o, t = first_reaching(curves["openk1"], target), first_reaching(curves["trl"], target)
    print(f"\nTRL's final accuracy: {100 * target:.1f}%")
    assert t is not None
    print(f"TRL reaches it at iteration {t[0]}: {t[1]:.1f} s wall, {t[2]:.1f} s CPU")
    if o is None:
        print("openk1 does not reach it in this run")
        print("time_to_trl_accuracy_ratio: inf")
        return
    print(f"openk1 reaches it at iteration {o[0]}: {o[1]:.1f} s wall, {o[2]:.1f} s CPU "
          f"({o[1] / t[1]:.2f}x TRL's wall time, {o[2] / t[2]:.2f}x its CPU time)")
    print(f"time_to_trl_accuracy_ratio (CPU s): {o[2] / t[2]:.2f}")
    print(f"time_to_trl_accuracy_ratio: {o[1] / t[1]:.2f}")



def plot_accuracy(runs: dict[str, dict[str, list[Any]]], out_png: Path) -> Path:
    """Held-out accuracy vs training seconds (wall), one colour per run (label -> curves), openk1
    solid and TRL dashed; a dotted line at each run's TRL final accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from openk1.report.run_dir import atomic_file

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (label, curves) in enumerate(runs.items()):
        colour = f"C{i}"
        for name, style in (("openk1", "-"), ("trl", "--")):
            ax.plot([c[1] for c in curves[name]], [100 * c[3] for c in curves[name]], style, color=colour,
                    marker="o" if name == "openk1" else "x", markersize=3, label=f"{name} ({label})")
        ax.axhline(100 * curves["trl"][-1][3], color=colour, linestyle=":", linewidth=0.8)
    ax.set_xlabel("training seconds (wall; evaluation excluded)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("openk1 k1.5 RL vs TRL GRPO from the same SFT model (dotted: TRL's final)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    with atomic_file(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out_png

ALL_WORKERS = WORKERS | {"update-ab": update_ab_worker}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller run (a few minutes)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in both frameworks (1: steadiest on a shared machine)")
    parser.add_argument("--iterations", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0,
                        help="model, prompts and sampling seed of both frameworks (--time-to-accuracy: the "
                             "training seed; the evaluation's is fixed)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16",
                        help="both frameworks: bf16 mixed precision (the default: TRL's GRPOConfig "
                             "defaults to bf16=True; openk1 precision: bf16), or fp32")
    parser.add_argument("--compile", action="store_true",
                        help="openk1 with `compile: true` (its update's layers through torch.compile; the "
                             "compilation falls in the warm-up iteration and is reported)")
    parser.add_argument("--time-to-accuracy", action="store_true",
                        help="held-out accuracy per training second from the demo's SFT model")
    parser.add_argument("--model", default="runs/demo/longcot_sft/sft/model",
                        help="(--time-to-accuracy) the demo's long-CoT SFT model")
    parser.add_argument("--data", default="runs/demo/curate/curated.jsonl", help="(--time-to-accuracy) RL prompts")
    parser.add_argument("--eval-data", default="runs/demo/data/heldout.jsonl", help="(--time-to-accuracy)")
    parser.add_argument("--eval-every", type=int, default=2, help="(--time-to-accuracy) iterations")
    parser.add_argument("--core-rl", action="store_true",
                        help="(--time-to-accuracy) openk1 without the demo's curriculum, partial rollouts "
                             "and length penalty")
    parser.add_argument("--eval-samples", type=int, default=4, help="(--time-to-accuracy) per held-out problem")
    parser.add_argument("--update-ab", action="store_true",
                        help="the demo's RL update before/after each optimisation (CPU s, peak RSS)")
    parser.add_argument("--plot", nargs="+", metavar=("PNG", "CURVES"),
                        help="(no run) plot the curves.json files of --time-to-accuracy runs into PNG")
    parser.add_argument("--worker", choices=list(ALL_WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        ALL_WORKERS[args.worker](json.loads(args.spec))
        return
    if args.plot:
        runs = {f"seed {c.get('seed', i)}": c for i, c in enumerate(json.loads(Path(f).read_text())
                                                                    for f in args.plot[1:])}
        print(plot_accuracy(runs, Path(args.plot[0])))
        return
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
                        "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
                        "PYTHONWARNINGS": "ignore"}
    if args.time_to_accuracy:
        time_to_accuracy(args, env)
        return
    if args.update_ab:
        update_ab(args, env)
        return
    spec = settings(args)
    root = Path(tempfile.mkdtemp(prefix="openk1-vs-trl-"))
    spec["root"] = str(root)
    spec["model"], params = build_model(root, spec)
    spec["data"] = build_prompts(root, 256, spec["seed"])
    spec["prompt_tokens"] = mean_prompt_tokens(spec["data"], spec["model"])
    spec["matmul_n"] = 2048
    precisions = sorted({"fp32", args.precision})   # the fp32 peak always (the MFU target's reference)
    before = {p: matmul_peak(args.threads, spec["matmul_n"], 7, p) for p in precisions}
    rows = alternate(spec, env)
    after = {p: matmul_peak(args.threads, spec["matmul_n"], 7, p) for p in precisions}
    peaks = {p: (max(before[p][0], after[p][0]), max(before[p][1], after[p][1])) for p in precisions}
    res = {name: summarise(r) for name, r in rows.items()}
    speedup = print_table(spec, res, peaks, params)
    (root / "result.json").write_text(json.dumps({"spec": spec, "rows": rows, "summary": res, "peaks": peaks}))
    print(f"\nraw rows: {root / 'result.json'}")
    print(f"speedup_vs_trl: {speedup:.2f}")


if __name__ == "__main__":
    main()
