"""`openk1 <command>`: parse flags and config, call one stage's `run(cfg)`; nothing else.

Each command takes only the flags it uses (`Command.flags`); its `--help` shows a `--set`
example that is valid for it (a test builds every example). The run directory (`--out`) is
claimed by the stage (report/run_dir.py); here `--out` gets its default, and `--resume` (or a
later action of the same run, e.g. `longcot train` after `longcot build`) starts from the run's
own config.yaml.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openk1.config import StageConfig, build, merge, parse_overrides, read_yaml
from openk1.errors import OpenK1Error
from openk1.memory import keep_freed_memory


@dataclass(frozen=True)
class Command:
    module: str                  # under openk1.stages
    config: str                  # its config class
    help: str
    example: str                 # a --set example valid for this command
    flags: tuple[str, ...] = ("model", "data")   # besides --config --out --set --overwrite --debug
    required: tuple[str, ...] = ()               # config fields that must be set (flag or config)


COMMANDS: dict[str, Command] = {
    "init-model": Command("init_model", "InitModelConfig",
                          "write a tiny Llama + char tokenizer (save_pretrained) in DIR/model",
                          "hidden=128 layers=4", flags=()),
    "pretrain": Command("pretrain", "PretrainConfig",
                        "staged next-token pretraining on text rows (packed)",
                        "batch_size=16 optim.grad_clip=1.0", flags=("model", "data", "resume"),
                        required=("model",)),
    "sft": Command("sft", "SFTConfig", "supervised fine-tuning on prompt/response rows",
                   "epochs=2 optim.lr=3e-4", flags=("model", "data", "resume"),
                   required=("model", "data")),
    "longcot": Command("longcot", "LongCoTConfig",
                       "long-CoT warm-up: `build` verified traces, `train` SFT on them (default: both)",
                       "build.samples_per_prompt=4 epochs=2", flags=("model", "data", "resume", "action"),
                       required=("model",)),
    "curate": Command("curate", "CurateConfig",
                      "RL prompt set: format filter, dedup, difficulty, easy-to-hack, balance (report §2.1)",
                      "difficulty.samples_per_prompt=8", flags=("model", "data", "resume"),
                      required=("data",)),
    "rl": Command("rl", "RLConfig", "Kimi k1.5 RL: online policy mirror descent",
                  "tau=0.5 iterations=40", flags=("model", "data", "resume", "ray"),
                  required=("model", "data")),
    "eval": Command("eval", "EvalConfig",
                    "held-out Pass@1 (mean over k samples), mean tokens, stop reasons; one row per "
                    "benchmark file", "eval.samples_per_prompt=8 benchmarks=[aime.jsonl]",
                    required=("model", "data")),
    "score": Command("score", "ScoreConfig",
                     "verify responses: rows in (--data), rows + reward/verdict out (--out FILE)",
                     "workers=4", flags=("data",), required=("data",)),
    "code-tests": Command("code_tests", "CodeTestsStageConfig",
                          "make test cases for code problems (k1.5: 50 inputs, 10 solutions, 7 agree, "
                          "9 pass, 40 tests); --model writes missing generators",
                          "num_inputs=20 workers=4", flags=("model", "data"), required=("data",)),
    "rm": Command("rm", "RMTrainConfig",
                  "`rm train`: train a reward model on labelled responses (kind: classic | cot)",
                  "kind=cot epochs=2", flags=("model", "data", "action", "resume"),
                  required=("model", "data")),
    "merge": Command("merge", "MergeConfig",
                     "weighted average of checkpoints of one architecture (long2short)",
                     "models=[runs/rl/model,runs/sft/model] weights=[0.7,0.3]", flags=()),
    "dpo": Command("dpo", "DPOConfig", "DPO on prompt/chosen/rejected rows against a frozen reference",
                   "beta=0.1 epochs=2", flags=("model", "data", "resume"), required=("model", "data")),
    "long2short": Command("long2short", "Long2ShortConfig",
                          "shorten a long-CoT model: merge, shortest rejection sampling, DPO, RL (§2.4)",
                          "methods=[shortest_rs,dpo] samples.samples_per_prompt=4",
                          required=("model", "data", "eval_data")),
    "demo": Command("demo", "DemoConfig", "the whole pipeline on a tiny model on CPU (the main job)",
                    "rl.tau=0.1 rl.iterations=10", flags=("quick",)),
}
FLAG_NAMES = {"model": "--model", "data": "--data", "eval_data": "--set eval_data=FILE"}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="openk1", description="The Kimi k1.5 training recipe.")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        cmd = sub.add_parser(name, help=command.help, description=command.help)
        _add_flags(cmd, name, command)
    return top


def _add_flags(cmd: argparse.ArgumentParser, name: str, command: Command) -> None:
    flags = command.flags
    if "action" in flags and name == "longcot":
        cmd.add_argument("action", nargs="?", choices=("build", "train", "all"), default="all")
    elif "action" in flags:
        cmd.add_argument("action", choices=("train",))
    cmd.add_argument("--config", help="YAML config file")
    if "model" in flags:
        cmd.add_argument("--model", help="model: a save_pretrained folder or a run directory with model/")
    if "data" in flags:
        cmd.add_argument("--data", help="dataset: JSONL, Parquet or HF dataset folder")
    out_help = ("the JSONL file to write" if name == "score" else
                f"run directory (default: a new runs/{name}-<time>)")
    cmd.add_argument("--out", help=out_help)
    cmd.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                     metavar="KEY=VALUE", help=f"override a config key, e.g. {command.example}")
    cmd.add_argument("--overwrite", action="store_true",
                     help="replace the output file" if name == "score" else
                     "replace the run that --out holds (refused without this or --resume)")
    if "resume" in flags:
        cmd.add_argument("--resume", action="store_true",
                         help="continue the run in --out with its own config.yaml")
    if "ray" in flags:
        cmd.add_argument("--ray", action="store_true",
                         help="rollout, reward and trainer as Ray actors (settings: ray.*)")
    if "quick" in flags:
        cmd.add_argument("--quick", action="store_true", help="CI-sized demo (<= 2 minutes)")
    cmd.add_argument("--debug", action="store_true", help="show tracebacks")


def load_stage(command: str) -> tuple[Callable[[Any], dict[str, Any]], type[StageConfig]]:
    import importlib

    spec = COMMANDS[command]
    module = importlib.import_module(f"openk1.stages.{spec.module}")
    return module.run, getattr(module, spec.config)


def default_out(command: str) -> str:
    """A new `runs/<command>-<time>` (never the current directory); ranks under torchrun could
    not agree on one, so there --out is required."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise OpenK1Error(f"{command}: under torchrun give --out DIR (every rank must name the same)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = Path("runs") / f"{command}-{stamp}", 1
    while path.exists():
        n += 1
        path = Path("runs") / f"{command}-{stamp}-{n}"
    return str(path)


def config_values(args: argparse.Namespace, config_cls: type[StageConfig] | None = None,
                  taken: dict[str, Any] | None = None) -> dict[str, Any]:
    """(The run's own config.yaml on --resume) <- preset (demo) <- --config <- --set <- flags."""
    values: dict[str, Any] = {}
    if args.command == "demo":
        from openk1.stages.demo import preset

        values = preset(args.quick)
        values["quick"] = args.quick
    if args.config:
        values = merge(values, read_yaml(args.config))
    values = merge(values, parse_overrides(args.overrides))
    flags = {"model": getattr(args, "model", None), "data": getattr(args, "data", None), "out": args.out}
    values.update({k: v for k, v in flags.items() if v and k != "data"})
    if flags["data"]:   # --data FILE is data.path: a preset or column keys set with --set stay
        values = merge(values, {"data": {"path": flags["data"]}}) if isinstance(values.get("data"), dict) \
            else {**values, "data": flags["data"]}
    values.update({k: True for k in ("resume", "overwrite") if getattr(args, k, False)})
    if getattr(args, "action", None):
        values["action"] = args.action
    if args.command == "score":
        return values
    if not values.get("out"):
        if values.get("resume"):
            raise OpenK1Error(f"{args.command}: --resume needs --out DIR (the run to continue)")
        values["out"] = default_out(args.command)
    base = saved_base(values, config_cls)
    if not base:   # a new run: the model's recommendations fill what the invocation leaves unset
        base = recommended_base(args.command, values)
        if taken is not None:
            taken.update(base)
    if isinstance(base.get("data"), dict) and isinstance(values.get("data"), str):
        values = {**values, "data": {"path": values["data"]}}   # --resume --data FILE: the saved preset stays
    return merge(base, values)


def recommended_base(command: str, values: dict[str, Any]) -> dict[str, Any]:
    """The settings `--model` recommends for this command (models/io.py) that the invocation
    leaves unset; `main` names them on stderr once the config is valid (the resolved values are
    in DIR/config.yaml)."""
    from openk1.models.io import recommended_settings

    base = recommended_settings(values["model"], command) if values.get("model") else {}
    return unset_part(base, values)


def recommended_notice(command: str, taken: dict[str, Any]) -> str:
    """One line naming the recommended settings a run took ("" when none)."""
    from openk1.report.run_dir import flat

    listed = ", ".join(f"{key}={value}" for key, value in flat(taken).items())
    return f"openk1 {command}: took the settings the model recommends: {listed}" if taken else ""


def unset_part(recommended: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The part of `recommended` that `given` leaves unset. A section of plain values (`optim`)
    is taken whole or not at all: `optim.lr` given alone keeps the default lr_min, not a
    recommended one meant for another lr.

    >>> unset_part({"optim": {"lr": 3e-3, "lr_min": 3e-4}, "epochs": 10}, {"optim": {"lr": 1e-5}})
    {'epochs': 10}
    """
    out: dict[str, Any] = {}
    for key, value in recommended.items():
        mine = given.get(key)
        if not isinstance(value, dict):
            if key not in given:
                out[key] = value
        elif any(isinstance(v, dict) for v in value.values()):
            part = unset_part(value, mine if isinstance(mine, dict) else {})
            if part and (mine is None or isinstance(mine, dict)):
                out[key] = part
        elif mine is None:
            out[key] = value
    return out


def saved_base(values: dict[str, Any], config_cls: type[StageConfig] | None) -> dict[str, Any]:
    """The run's own config.yaml when this invocation continues it (--resume, or a later
    action such as `longcot train` after `longcot build`); else nothing."""
    from openk1.report.run_dir import saved_values

    path = Path(values["out"])
    if values.get("overwrite") or not (path / "config.yaml").is_file():
        return {}
    saved = saved_values(path)
    continues = config_cls is not None and config_cls.continues(saved, values)
    return saved if values.get("resume") or continues else {}


def check_required(command: str, cfg: Any) -> None:
    if getattr(cfg, "resume", False):
        return
    for field in COMMANDS[command].required:
        if field == "model" and command == "longcot" and getattr(cfg, "action", "") != "train" \
                and cfg.build.generator:
            continue
        if not getattr(cfg, field):
            raise OpenK1Error(f"{command}: needs {FLAG_NAMES.get(field, field)}")
    if command == "longcot" and cfg.action != "train" and not cfg.data:
        raise OpenK1Error("longcot: `build` needs --data FILE (the problems to write traces for)")
    if command == "pretrain" and not cfg.data and any(not s.sources for s in cfg.stages):
        raise OpenK1Error("pretrain: needs --data FILE, or `sources` in every stage of the config")


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
            from openk1.stages import rl_ray

            run = rl_ray.run
        taken: dict[str, Any] = {}   # the model's recommended settings this run took
        cfg: StageConfig = build(config_cls, config_values(args, config_cls, taken),
                                 source=args.config or "config")
        check_required(args.command, cfg)
        from openk1.distributed import runtime

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
    if int(os.environ.get("RANK", "0")) == 0:
        if notice := recommended_notice(args.command, taken):
            print(notice, file=sys.stderr)   # after the run: an error stays one line
        if args.command != "demo":
            from openk1.report.run_dir import to_json

            print(to_json(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
