"""`openk1 demo`: the whole pipeline on a tiny model, from nothing, on a laptop CPU.

    synthetic task -> init-model -> sft -> curate (with the SFT model) -> rl (k1.5 OPMD)
    -> held-out table + summary.json

Every step is the ordinary stage (`sft.run`, `rl.run`, ...) reading and writing ordinary files
in DIR, so the demo exercises the path a real model takes. The preset lives in
`openk1/presets/demo.yaml` (`--quick`: `demo_quick.yaml`, CI's smoke test).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from openk1.config import StageConfig, build, merge, read_yaml
from openk1.data.io import write_jsonl
from openk1.data.synthetic import TaskConfig, make_task, sft_rows
from openk1.models.tiny import TinyModelConfig
from openk1.report.run_dir import RunDir
from openk1.stages import curate, init_model, rl, sft
from openk1.stages.curate import CurateConfig
from openk1.stages.eval import EvalSettings
from openk1.stages.rl import RLConfig
from openk1.stages.sft import SFTConfig

PRESETS = Path(__file__).resolve().parent.parent / "presets"


class DemoConfig(StageConfig):
    quick: bool = False
    sft_format: str = "short"          # which synthetic response format plain SFT learns
    task: TaskConfig = TaskConfig()
    model_size: TinyModelConfig = TinyModelConfig()
    sft: SFTConfig = SFTConfig()
    curate: CurateConfig = CurateConfig()
    rl_candidates: int = 640           # training problems curated into the RL prompt set
    rl: RLConfig = RLConfig()
    eval: EvalSettings = EvalSettings()


def preset(quick: bool) -> dict[str, Any]:
    values = read_yaml(PRESETS / "demo.yaml")
    return merge(values, read_yaml(PRESETS / "demo_quick.yaml")) if quick else values


def make_data(cfg: DemoConfig, root: Path) -> dict[str, str]:
    task = make_task(cfg.task)
    names = ("train", "heldout", "sft", "rl_candidates")
    paths = {name: str(root / "data" / f"{name}.jsonl") for name in names}
    write_jsonl(paths["train"], task["train"])
    write_jsonl(paths["rl_candidates"], task["train"][:cfg.rl_candidates])
    write_jsonl(paths["heldout"], task["heldout"])
    write_jsonl(paths["sft"], sft_rows(task["train"], cfg.sft_format))
    return paths


def stage_config(cls: type, section: Any, **fields: Any) -> Any:
    return build(cls, merge(section.model_dump(), fields), source=f"demo.{cls.__name__}")


def run(cfg: DemoConfig) -> dict[str, Any]:
    start = time.perf_counter()
    root = Path(cfg.out or "runs/demo")
    paths = make_data(cfg, root)
    init_dir = str(root / "init_model")
    init_model.run(stage_config(init_model.InitModelConfig, cfg.model_size, out=init_dir, seed=cfg.seed))
    shared_eval = cfg.eval.model_dump()
    sft_summary = sft.run(stage_config(SFTConfig, cfg.sft, model=init_dir, data=paths["sft"],
                                       out=str(root / "sft"), eval_data=paths["heldout"],
                                       eval=shared_eval, seed=cfg.seed))
    dedup = merge(cfg.curate.dedup.model_dump(), {"decontaminate": [paths["heldout"]]})
    curated = curate.run(stage_config(CurateConfig, cfg.curate, model=sft_summary["model"],
                                      data=paths["rl_candidates"], out=str(root / "curate"),
                                      dedup=dedup, seed=cfg.seed))
    rl_summary = rl.run(stage_config(RLConfig, cfg.rl, model=sft_summary["model"],
                                     data=str(root / "curate" / "curated.jsonl"), out=str(root / "rl"),
                                     eval_data=paths["heldout"], eval=shared_eval, seed=cfg.seed))
    stages = [_entry("sft", sft_summary), _entry("rl", rl_summary)]
    summary = {"stages": stages, "curate": _curate_entry(curated),
               "wall_seconds": time.perf_counter() - start}
    RunDir(root, tensorboard=False).write_summary(summary)
    print(table(stages))
    return summary


def _entry(name: str, summary: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "accuracy": summary["accuracy"], "mean_tokens": summary["mean_tokens"],
            "accuracy_by_difficulty": summary.get("accuracy_by_difficulty", {}),
            "model": summary["model"]}


def _curate_entry(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary.get(k) for k in ("input_rows", "kept_rows", "dropped_rows", "removed",
                                        "difficulty_counts")}


def table(stages: list[dict[str, Any]]) -> str:
    lines = ["| stage | held-out accuracy | mean tokens |", "|---|---|---|"]
    lines += [f"| {s['name']} | {100 * s['accuracy']:.1f}% | {s['mean_tokens']:.1f} |" for s in stages]
    return "\n".join(lines)
