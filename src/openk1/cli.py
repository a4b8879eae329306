"""`openk1 <command>`: parse flags and config, call one stage's `run(cfg)`; nothing else."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from openk1.config import build, merge, parse_overrides, read_yaml
from openk1.errors import OpenK1Error
from openk1.memory import keep_freed_memory

# command -> (module under openk1.stages, config class name, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "init-model": ("init_model", "InitModelConfig", "write a tiny Llama + char tokenizer (save_pretrained)"),
    "pretrain": ("pretrain", "PretrainConfig", "staged next-token pretraining on text rows (packed)"),
    "sft": ("sft", "SFTConfig", "supervised fine-tuning on prompt/response rows"),
    "longcot": ("longcot", "LongCoTConfig",
                "long-CoT warm-up: `build` verified traces, `train` SFT on them (default: both)"),
    "curate": ("curate", "CurateConfig",
               "RL prompt set: format filter, dedup, difficulty, easy-to-hack, balance (report §2.1)"),
    "rl": ("rl", "RLConfig", "Kimi k1.5 RL: online policy mirror descent"),
    "eval": ("eval", "EvalConfig", "held-out accuracy and mean tokens with the training verifier"),
    "score": ("score", "ScoreConfig", "verify responses: rows in, rows + reward/verdict out"),
    "code-tests": ("code_tests", "CodeTestsStageConfig",
                   "make test cases for code problems (k1.5: 50 inputs, 10 solutions, 7 agree, 9 pass)"),
    "rm": ("rm", "RMTrainConfig", "`rm train`: train the classic reward model on labelled responses"),
    "merge": ("merge", "MergeConfig", "weighted average of checkpoints of one architecture (long2short)"),
    "dpo": ("dpo", "DPOConfig", "DPO on prompt/chosen/rejected rows against a frozen reference"),
    "long2short": ("long2short", "Long2ShortConfig",
                   "shorten a long-CoT model: merge, shortest rejection sampling, DPO, RL (§2.4)"),
    "demo": ("demo", "DemoConfig", "the whole pipeline on a tiny model on CPU (the main job)"),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="openk1", description="The Kimi k1.5 training recipe.")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, _, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("--config", help="YAML config file")
        cmd.add_argument("--model", help="model directory (HF save_pretrained)")
        cmd.add_argument("--data", help="dataset: JSONL, Parquet or HF dataset folder")
        cmd.add_argument("--out", help="run directory (or output file for score)")
        cmd.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                         metavar="KEY=VALUE", help="override a config key, e.g. rl.tau=0.1")
        cmd.add_argument("--debug", action="store_true", help="show tracebacks")
        if name in ("rl", "pretrain", "sft", "longcot", "dpo"):
            cmd.add_argument("--resume", action="store_true", help="continue from DIR/checkpoints")
        if name == "rl":
            cmd.add_argument("--ray", action="store_true",
                             help="rollout, reward and trainer as Ray actors (settings: ray.*)")
        if name == "score":
            cmd.add_argument("--input", help="rows with `response` and problem fields")
        if name == "longcot":
            cmd.add_argument("action", nargs="?", choices=("build", "train", "all"), default="all")
        if name == "rm":
            cmd.add_argument("action", choices=("train",))
        if name == "demo":
            cmd.add_argument("--quick", action="store_true", help="CI-sized demo (<= 2 minutes)")
    return top


def load_stage(command: str) -> tuple[Callable[[Any], dict[str, Any]], type]:
    import importlib

    module_name, config_name, _ = COMMANDS[command]
    module = importlib.import_module(f"openk1.stages.{module_name}")
    return module.run, getattr(module, config_name)


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    """Preset (demo) <- --config file <- --set overrides <- flags."""
    values: dict[str, Any] = {}
    if args.command == "demo":
        from openk1.stages.demo import preset

        values = preset(args.quick)
        values["quick"] = args.quick
    if args.config:
        values = merge(values, read_yaml(args.config))
    values = merge(values, parse_overrides(args.overrides))
    flags = {"model": args.model, "data": args.data, "out": args.out,
             "input": getattr(args, "input", None)}
    values.update({k: v for k, v in flags.items() if v})
    if getattr(args, "resume", False):
        values["resume"] = True
    if args.command in ("longcot", "rm"):
        values["action"] = args.action
    return values


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        quiet_libraries()
        keep_freed_memory()
        run, config_cls = load_stage(args.command)
        if getattr(args, "ray", False):
            from openk1.dist import ray_rl

            run = ray_rl.run
        cfg = build(config_cls, config_values(args), source=args.config or "config")
        from openk1.dist import runtime

        runtime.init_from_env()   # under torchrun (WORLD_SIZE > 1): join the process group
        result = run(cfg)
        runtime.shutdown()
    except OpenK1Error as exc:
        if args.debug:
            raise
        print(f"openk1 {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"openk1 {args.command}: interrupted", file=sys.stderr)
        return 130
    if args.command != "demo" and int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
