"""`openk1 demo`: the whole pipeline on a tiny model, from nothing, on a laptop CPU.

    synthetic task -> init-model -> pretrain -> sft (short answers) -> longcot_sft (long CoT)
    -> curate (with the long-CoT model) -> rl (k1.5 OPMD)
    -> long2short (merge with the sft model, shortest rejection sampling, DPO, length-penalty RL)
    -> held-out table + summary.json
    vision chain (`vision.enabled`): synthetic images (data/synthetic_vision.py) -> init-model
    (vision=true) -> vl_pretrain (captions) -> vl_sft (worked answers) -> vl_rl -> examples.png

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

from openk1.config import Section, StageConfig, build, merge, read_yaml
from openk1.data.io import load_problems, write_jsonl
from openk1.data.synthetic import TaskConfig, make_task, sft_rows
from openk1.data.synthetic_vision import VisionTaskConfig, make_vision_task
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


class VisionDemoConfig(Section):
    """The vision chain: a tiny LLaVA pretrained on captions, SFT on worked answers, RL on image problems."""

    enabled: bool = Field(False, description="run the vision chain after the text chain")
    task: VisionTaskConfig = Field(VisionTaskConfig(), description="the synthetic images (data/synthetic_vision.py)")
    model_size: TinyModelConfig = Field(TinyModelConfig(), description="the Llama under the tiny LLaVA")
    pretrain: PretrainConfig = Field(PretrainConfig(), description="VL pretraining on image + caption `text` rows")
    sft: SFTConfig = Field(SFTConfig(), description="SFT on the image problems' worked answers")
    rl_problems: int = Field(1000, gt=0, description="training image problems in the RL prompt set")
    rl: RLConfig = Field(RLConfig(), description="RL on the image problems")
    eval: EvalSettings = Field(EvalSettings(), description="held-out evaluation after every vision stage")
    examples: int = Field(8, gt=0, description="held-out images in DIR/vision/examples.png")


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
    vision: VisionDemoConfig = Field(VisionDemoConfig(), description="the vision chain (docs/demo.md)")


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
    extra: dict[str, Any] = {}
    if cfg.vision.enabled:
        vision_stages, extra["vision"] = vision_chain(cfg.vision, root / "vision", cfg.seed)
        stages += vision_stages
    summary = frame.finish({"stages": stages, "curate": _curate_entry(curated)} | extra)
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


def vision_chain(cfg: VisionDemoConfig, root: Path, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """init-model (vision) -> vl_pretrain -> vl_sft -> vl_rl under DIR/vision, the same stage
    `run` functions as the text chain: the three table entries and the summary's `vision` part."""
    paths = make_vision_data(cfg, root / "data")
    init_dir = init_model.run(stage_config(init_model.InitModelConfig, cfg.model_size, vision=True,
                                           out=str(root / "init_model"), seed=seed))["model"]
    shared_eval = cfg.eval.model_dump()
    pre = pretrain.run(stage_config(PretrainConfig, cfg.pretrain, model=init_dir, out=str(root / "vl_pretrain"),
                                    data_root=str(root / "data"), seed=seed))
    pre |= held_out_accuracy(pre["model"], paths["heldout"], cfg.eval)
    tuned = sft.run(stage_config(SFTConfig, cfg.sft, model=pre["model"], data=paths["sft"], out=str(root / "vl_sft"),
                                 eval_data=paths["heldout"], eval=shared_eval, seed=seed))
    tuned_rl = rl.run(stage_config(RLConfig, cfg.rl, model=tuned["model"], data=paths["rl"], out=str(root / "vl_rl"),
                                   eval_data=paths["heldout"], eval=shared_eval, seed=seed))
    samples = cfg.task.heldout_problems * cfg.eval.samples_per_prompt
    stages = [_vision_entry(name, s, samples) for name, s in
              (("vl_pretrain", pre), ("vl_sft", tuned), ("vl_rl", tuned_rl))]
    figure = examples_figure(tuned_rl["model"], paths["heldout"], cfg, root / "examples.png")
    info = {"figure": str(figure), "heldout_problems": cfg.task.heldout_problems,
            "samples_per_problem": cfg.eval.samples_per_prompt, "kinds": list(cfg.task.kinds),
            "rl_gain": stages[2]["accuracy"] - stages[1]["accuracy"]}
    return stages, info


def make_vision_data(cfg: VisionDemoConfig, data: Path) -> dict[str, str]:
    """The images and rows under DIR/vision/data: captions, sft, rl (the first `rl_problems`
    training problems) and heldout."""
    task = make_vision_task(cfg.task, data)
    rows = {"captions": task["captions"], "sft": task["sft"], "rl": task["train"][:cfg.rl_problems],
            "heldout": task["heldout"]}
    paths = {name: str(data / f"{name}.jsonl") for name in rows}
    for name, part in rows.items():
        write_jsonl(paths[name], part)
    return paths


def _vision_entry(name: str, summary: dict[str, Any], samples: int) -> dict[str, Any]:
    """A table entry with the binomial standard error of its accuracy, sqrt(p(1-p)/n) over the
    n = problems x samples held-out answers."""
    p = summary["accuracy"]
    return _entry(name, summary) | {"standard_error": math.sqrt(p * (1 - p) / samples)}


def examples_figure(model_dir: str, heldout: str, cfg: VisionDemoConfig, path: Path) -> Path:
    """The first `examples` held-out images with the model's answer (one greedy response) and the
    ground truth, as a PNG (matplotlib)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from openk1.data.images import load_image
    from openk1.data.sources import last_boxed

    problems = load_problems(heldout)[:cfg.examples]
    settings = cfg.eval.model_copy(update={"samples_per_prompt": 1, "sampling": cfg.eval.sampling.model_copy(
        update={"temperature": 0.0})})
    model, tokenizer = load_model(model_dir)
    rows = evaluate(model, tokenizer, problems, settings, keep_samples=True)["rows"]
    cols = min(4, len(problems))
    lines = math.ceil(len(problems) / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(2.2 * cols, 2.6 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, problem, row in zip(axes.flat, problems, rows):
        ax.imshow(load_image(problem.images[0]), interpolation="nearest")
        answer = last_boxed(row["response"]) or "-"
        ax.set_title(f"{problem.prompt.split(chr(10))[-1]}\nmodel {answer} | truth {problem.answer}", fontsize=8,
                     color="green" if row["reward"] > 0 else "red")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
