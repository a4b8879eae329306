"""`openk1 demo`: the whole pipeline on a tiny model, from nothing, on a laptop CPU.

    synthetic task -> init-model -> pretrain -> sft (short answers) -> longcot_sft (long CoT)
    -> curate (with the long-CoT model) -> rl (k1.5 OPMD)
    -> long2short (merge with the sft model, shortest rejection sampling, DPO, length-penalty RL)
    -> held-out table + summary.json

Every step is the ordinary stage (`pretrain.run`, `sft.run`, `longcot.run`, `rl.run`, ...)
reading and writing ordinary files in DIR, so the demo exercises the path a real model takes.
The preset lives in `openk1/presets/demo.yaml`: long traces with optional re-verification lines
(the redundancy long2short removes) and partial rollouts that cut them. `demo_plain.yaml`
overlays the traces without those lines, with the curriculum and the length penalty;
`--quick` (CI's smoke test) is that plain demo shortened by `demo_quick.yaml`. The `long2short`
section starts from `presets/long2short_demo.yaml`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import Field

from openk1.config import StageConfig, build, merge, read_yaml
from openk1.data.io import load_problems, write_jsonl
from openk1.data.synthetic import TaskConfig, make_task, sft_rows
from openk1.frame import StageRun
from openk1.models.io import load_model
from openk1.models.tiny import TinyModelConfig
from openk1.stages import curate, init_model, long2short, longcot, pretrain, rl, sft
from openk1.stages.curate import CurateConfig
from openk1.stages.eval import EvalSettings, evaluate
from openk1.stages.long2short import Long2ShortConfig
from openk1.stages.longcot import LongCoTConfig
from openk1.stages.pretrain import CorpusConfig, PretrainConfig, make_corpus, worked_text
from openk1.stages.rl import RLConfig
from openk1.stages.sft import SFTConfig

PRESETS = Path(__file__).resolve().parent.parent / "presets"


class DemoConfig(StageConfig):
    quick: bool = Field(False, description="CI's smoke test: demo_plain.yaml shortened by demo_quick.yaml")
    task: TaskConfig = Field(TaskConfig(), description="the synthetic arithmetic task (data/synthetic.py)")
    model_size: TinyModelConfig = Field(TinyModelConfig(), description="the tiny Llama init-model builds")
    corpus: CorpusConfig = Field(CorpusConfig(), description="the pretraining corpus (stages/pretrain.py)")
    pretrain: PretrainConfig = Field(PretrainConfig(), description="the pretraining stages")
    sft: SFTConfig = Field(SFTConfig(), description="vanilla SFT: short `\\boxed{}` answers")
    longcot_sft: SFTConfig = Field(SFTConfig(), description="long-CoT SFT: the synthetic traces")
    curate: CurateConfig = Field(CurateConfig(), description="prompt-set curation with the long-CoT model")
    rl_candidates: int = Field(640, gt=0, description="training problems curated into the RL prompt set")
    rl: RLConfig = Field(RLConfig(), description="RL on the curated prompts")
    long2short: Long2ShortConfig = Field(Long2ShortConfig(), description="long2short from the RL model")
    eval: EvalSettings = Field(EvalSettings(), description="held-out evaluation after every stage")


def preset(quick: bool) -> dict[str, Any]:
    values = merge({"long2short": read_yaml(PRESETS / "long2short_demo.yaml")}, read_yaml(PRESETS / "demo.yaml"))
    if not quick:
        return values
    plain = merge(values, read_yaml(PRESETS / "demo_plain.yaml"))   # short traces: CI's budget
    return merge(plain, read_yaml(PRESETS / "demo_quick.yaml"))


def make_data(cfg: DemoConfig, root: Path) -> dict[str, str]:
    """The task's rows, SFT sets of both formats and the pretraining corpus, under DIR/data."""
    task = make_task(cfg.task)
    data = root / "data"
    rows = {"train": task["train"], "heldout": task["heldout"],
            "rl_candidates": task["train"][:cfg.rl_candidates],
            "sft": sft_rows(task["train"], "short"), "longcot": sft_rows(task["train"], "long"),
            "heldout_text": [{"text": worked_text(r, cfg.corpus)} for r in task["heldout"]]}
    paths = {name: str(data / f"{name}.jsonl") for name in rows}
    for name, part in rows.items():
        write_jsonl(paths[name], part)
    make_corpus(cfg.corpus, data / "corpus", exclude={r["prompt"] for r in task["heldout"]})
    return paths | {"corpus": str(data / "corpus")}


def stage_config(cls: type, section: Any, **fields: Any) -> Any:
    return build(cls, merge(section.model_dump(), fields), source=f"demo.{cls.__name__}")


def run(cfg: DemoConfig) -> dict[str, Any]:
    with StageRun(cfg, tensorboard=False) as frame:
        frame.begin()
        return _run_stages(cfg, frame)


def _run_stages(cfg: DemoConfig, frame: StageRun) -> dict[str, Any]:
    """Every stage in turn, each in its own folder of the demo's run directory."""
    root = frame.path
    paths = make_data(cfg, root)
    pre, plain, long = lm_stages(cfg, root, paths)
    dedup = merge(cfg.curate.dedup.model_dump(), {"decontaminate": [paths["heldout"]]})
    curated = curate.run(stage_config(CurateConfig, cfg.curate, model=long["model"],
                                      data=paths["rl_candidates"], out=str(root / "curate"),
                                      dedup=dedup, seed=cfg.seed))
    rl_summary = rl.run(stage_config(RLConfig, cfg.rl, model=long["model"],
                                     data=str(root / "curate" / "curated.jsonl"), out=str(root / "rl"),
                                     eval_data=paths["heldout"], eval=cfg.eval.model_dump(), seed=cfg.seed))
    short = long2short.run(stage_config(Long2ShortConfig, cfg.long2short, model=rl_summary["model"],
                                        data=paths["train"], eval_data=paths["heldout"],
                                        reference=str(root / "rl" / "summary.json"),
                                        merge=merge(cfg.long2short.merge.model_dump(), {"short_model": plain["model"]}),
                                        out=str(root / "long2short"), seed=cfg.seed))
    stages = [_entry("pretrain", pre), _entry("sft", plain), _entry("longcot_sft", long),
              _entry("rl", rl_summary)] + [_entry(e["name"], e) for e in short["stages"]]
    summary = frame.finish({"stages": stages, "curate": _curate_entry(curated)})
    print(table(stages))
    return summary


def lm_stages(cfg: DemoConfig, root: Path, paths: dict[str, str]) -> tuple[dict[str, Any], ...]:
    """init-model -> pretrain -> sft (short answers) -> longcot_sft: the three summaries."""
    init_dir = init_model.run(stage_config(init_model.InitModelConfig, cfg.model_size,
                                           out=str(root / "init_model"), seed=cfg.seed))["model"]
    shared_eval = cfg.eval.model_dump()
    pre = pretrain.run(stage_config(PretrainConfig, cfg.pretrain, model=init_dir, out=str(root / "pretrain"),
                                    data_root=paths["corpus"], eval_loss_data=paths["heldout_text"],
                                    seed=cfg.seed))
    pre |= held_out_accuracy(pre["model"], paths["heldout"], cfg.eval)
    plain = sft.run(stage_config(SFTConfig, cfg.sft, model=pre["model"], data=paths["sft"],
                                 out=str(root / "sft"), eval_data=paths["heldout"], eval=shared_eval,
                                 seed=cfg.seed))
    long = longcot.run(stage_config(LongCoTConfig, cfg.longcot_sft, action="train", model=plain["model"],
                                    dataset=paths["longcot"], out=str(root / "longcot_sft"),
                                    eval_data=paths["heldout"], eval=shared_eval, seed=cfg.seed))
    return pre, plain, long


def held_out_accuracy(model_dir: str, heldout: str, settings: EvalSettings) -> dict[str, Any]:
    """The pretrained model asked the held-out prompts as they are (it has seen worked solutions)."""
    model, tokenizer = load_model(model_dir)
    return evaluate(model, tokenizer, load_problems(heldout), settings)


def _entry(name: str, summary: dict[str, Any]) -> dict[str, Any]:
    entry = {"name": name, "accuracy": summary["accuracy"], "mean_tokens": summary["mean_tokens"],
             "accuracy_by_difficulty": summary.get("accuracy_by_difficulty", {}),
             "model": summary["model"]}
    loss = summary.get("eval_loss", float("nan"))
    return entry | ({"eval_loss": loss} if math.isfinite(loss) else {})


def _curate_entry(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary.get(k) for k in ("input_rows", "kept_rows", "dropped_rows", "removed",
                                        "difficulty_counts")}


def table(stages: list[dict[str, Any]]) -> str:
    lines = ["| stage | held-out accuracy | mean tokens |", "|---|---|---|"]
    lines += [f"| {s['name']} | {100 * s['accuracy']:.1f}% | {s['mean_tokens']:.1f} |" for s in stages]
    return "\n".join(lines)
