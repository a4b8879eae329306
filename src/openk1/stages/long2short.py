"""`openk1 long2short`: make a long-CoT model answer with fewer tokens (report §2.4).

From the long-CoT RL checkpoint (`--model`), each method in `methods` makes a model in DIR/<method>:

    merge        average its weights with a short-CoT model of the same lineage (`merge`)
    shortest_rs  sample n = 8 responses per training problem, keep the shortest correct one,
                 SFT on those rows (`shortest_rs`, the SFT stage)
    dpo          pairs from the same samples: chosen = the shortest correct response, rejected =
                 a wrong one or a correct one >= `pairs.length_ratio` (1.5) x longer (`dpo`)
    rl           continue RL with the length penalty on from iteration 0 and a much smaller
                 `sampling.max_new_tokens` (`rl`; defaults: presets/long2short_rl.yaml)

then evaluates every model and the long model itself on `eval_data` with the same settings
(`stages.eval.evaluate`, the training verifier) and writes DIR/summary.json (entries `l2s_<method>`
with accuracy, mean_tokens, model), a markdown table (also printed) and DIR/tradeoff.png
(accuracy vs mean tokens, the report's Figure 7). A response counts as correct for sampling when
its reward is 1 and it stopped normally (EOS; not cut at the token limit). Departures: the report gives
no merge ratio, DPO or RL hyper-parameters; all values here are ours.

Problems with images (docs/vision.md "DPO, reward models, curate and long2short with images"),
on a vision-language model: the samples are drawn with each problem's images, the SFT rows and
DPO pairs carry them (absolute paths or data URIs), RL and the evaluation take them as they do,
and merging two VLM checkpoints gives a VLM (models/merge.py: the same processor settings).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, model_validator
from tqdm import tqdm

from openk1.config import Section, StageConfig, build, merge, read_yaml
from openk1.data.images import image_field
from openk1.data.io import load_problems, write_jsonl
from openk1.data.sources import DataSource
from openk1.distributed import runtime
from openk1.errors import OpenK1Error
from openk1.frame import StageRun
from openk1.models.io import load_model
from openk1.report.plots import plot_tradeoff
from openk1.rewards.scoring import RewardConfig, score_many
from openk1.rollout.engine import requests_for
from openk1.rollout.hf import HFEngine, SamplingConfig
from openk1.stages import dpo as dpo_stage
from openk1.stages import merge as merge_stage
from openk1.stages import rl as rl_stage
from openk1.stages import sft as sft_stage
from openk1.stages.dpo import DPOConfig
from openk1.stages.eval import EvalSettings, evaluate
from openk1.stages.longcot import choose
from openk1.stages.rl import RLConfig
from openk1.stages.sft import SFTConfig
from openk1.types import Problem

PRESETS = Path(__file__).resolve().parent.parent / "presets"
Method = Literal["merge", "shortest_rs", "dpo", "rl"]
Sample = tuple[str, int, bool]      # (response, tokens, correct)


class MergeSettings(Section):
    short_model: str = Field("", description="a short-CoT model of the long model's lineage (required)")
    weights: list[Annotated[float, Field(ge=0.0)]] = Field(default_factory=lambda: [0.5, 0.5],
                                                           description="merge weights [long, short]")


class SampleSettings(Section):
    """The samples shortest rejection sampling and DPO are built from (drawn once)."""

    problems: int = Field(256, ge=0, description="first N problems of --data (0 = all)")
    samples_per_prompt: int = Field(8, gt=0, description="n responses per problem (report: 8)")
    sampling: SamplingConfig = Field(SamplingConfig(temperature=1.0, max_new_tokens=128),
                                     description="how the responses are sampled")
    score_workers: int = Field(0, ge=0, description="> 0: verifiers in that many processes")


class PairSettings(Section):
    length_ratio: float = Field(1.5, ge=1.0,
                                description="a correct response is rejected when >= ratio x the chosen's tokens")
    pairs_per_prompt: int = Field(0, ge=0,
                                  description="at most this many pairs per prompt (0 = every rejected response)")


class Long2ShortConfig(StageConfig):
    methods: list[Method] = Field(default_factory=lambda: list(get_args(Method)),
                                  description="the methods to run, each making a model in DIR/<method> (report §2.4)")
    eval_data: DataSource = Field(DataSource(), description="held-out problems (required) (a path or a data source)")
    eval: EvalSettings = Field(EvalSettings(), description="held-out evaluation settings, the same for every method")
    rewards: RewardConfig = Field(RewardConfig(), description="reward terms of sampling and evaluation")
    reference: str = Field("", description="summary.json of the long model under the same eval settings")
    merge: MergeSettings = Field(MergeSettings(), description="model merging: average with a short-CoT model")
    samples: SampleSettings = Field(SampleSettings(),
                                    description="the samples shortest rejection sampling and DPO are built from")
    shortest_rs: SFTConfig = Field(SFTConfig(epochs=2, batch_size=16),
                                   description="SFT on the shortest correct response per problem")
    shortest_rs_rounds: int = Field(1, ge=1, description="round r samples from round r-1's model (ours)")
    pairs: PairSettings = Field(PairSettings(),
                                description="DPO pairs: shortest correct (chosen) vs wrong or long (rejected)")
    dpo: DPOConfig = Field(DPOConfig(), description="DPO on those pairs")
    rl: RLConfig = Field(RLConfig(), description="long2short RL: presets/long2short_rl.yaml with these keys on top")

    @model_validator(mode="before")
    @classmethod
    def _rl_preset(cls, values: Any) -> Any:
        """The `rl` section is presets/long2short_rl.yaml with the given keys on top."""
        if isinstance(values, dict):
            given = values.get("rl") or {}
            base = read_yaml(PRESETS / "long2short_rl.yaml")
            values = {**values, "rl": merge(base, given if isinstance(given, dict) else given.model_dump())}
        return values


def shortest_rows(problems: list[Problem], groups: list[list[Sample]]) -> list[dict[str, Any]]:
    """SFT rows: each problem's shortest correct response (problems with none are skipped)."""
    rng = random.Random(0)
    return [{"prompt": p.prompt, "response": text, "id": p.id, **image_field(p.images)}
            for p, group in zip(problems, groups)
            for text in choose([(t, n) for t, n, ok in group if ok], "shortest", rng)]


def preference_pairs(problems: list[Problem], groups: list[list[Sample]], length_ratio: float,
                     pairs_per_prompt: int = 0) -> list[dict[str, Any]]:
    """DPO rows (report §2.4): chosen = the shortest correct response; rejected = each distinct
    *longer* response: a wrong one with more tokens than the chosen, a correct one with tokens
    >= length_ratio x the chosen's. A wrong response as short as the chosen or shorter is not a
    negative: the pairs teach "shorter", not "right" (the other methods and RL do that).

    >>> groups = [[("aa", 2, True), ("a", 1, True), ("x", 1, False), ("xy", 2, False), ("aaa", 3, True)]]
    >>> [r["rejected"] for r in preference_pairs([Problem("p", "1")], groups, 2.0)]
    ['aa', 'xy', 'aaa']
    """
    rows = []
    for problem, group in zip(problems, groups):
        correct = [(t, n) for t, n, ok in group if ok]
        if not correct:
            continue
        chosen, tokens = min(correct, key=lambda c: c[1])
        rejected = [t for t, n, ok in group
                    if t != chosen and (n >= length_ratio * tokens if ok else n > tokens)]
        rejected = list(dict.fromkeys(rejected))
        rejected = rejected[:pairs_per_prompt] if pairs_per_prompt else rejected
        rows += [{"prompt": problem.prompt, "chosen": chosen, "rejected": r, "id": problem.id,
                  **image_field(problem.images)} for r in rejected]
    return rows


def draw_samples(cfg: Long2ShortConfig, root: Path, model_dir: str = "",
                 round_: int = 1) -> tuple[list[Problem], list[list[Sample]]]:
    """n verified samples per training problem from the long model (or `model_dir`, for round
    `round_` of shortest rejection sampling); also DIR/samples.jsonl (samples_round<r>.jsonl)."""
    problems = load_problems(cfg.data)
    problems = problems[:cfg.samples.problems] if cfg.samples.problems else problems
    model, tokenizer = load_model(model_dir or cfg.model, prompts=cfg, device=runtime.resolve_device(cfg.device))
    k = cfg.samples.samples_per_prompt
    engine = HFEngine(model, tokenizer, cfg.samples.sampling)
    rollout = engine.sample(requests_for(tokenizer, [p.prompt for p in problems], k, cfg.seed + round_ - 1,
                                         [p.images for p in problems]))   # = generate() for text problems
    scores = score_many(rollout.texts, [p for p in problems for _ in range(k)], cfg.samples.score_workers,
                        rewards=cfg.rewards)
    samples = [(text, int(n), s.reward >= 1.0 and stop == "normal")
               for text, n, s, stop in zip(rollout.texts, rollout.lengths, scores, rollout.stop_reason)]
    name = "samples.jsonl" if round_ == 1 else f"samples_round{round_}.jsonl"
    write_jsonl(root / name, [{"id": p.id, "response": t, "tokens": n, "correct": ok}
                                         for j, (t, n, ok) in enumerate(samples) for p in [problems[j // k]]])
    return problems, [samples[i * k:(i + 1) * k] for i in range(len(problems))]


class Context:
    """What the methods share: the config, DIR, and the samples (drawn on first use)."""

    def __init__(self, cfg: Long2ShortConfig, root: Path) -> None:
        self.cfg, self.root = cfg, root
        self._samples: tuple[list[Problem], list[list[Sample]]] | None = None

    def samples(self) -> tuple[list[Problem], list[list[Sample]]]:
        if self._samples is None:
            self._samples = draw_samples(self.cfg, self.root)
        return self._samples

    def stage(self, cls: type, section: Any, **fields: Any) -> Any:
        values = merge(section.model_dump(), {"seed": self.cfg.seed, **fields})
        return build(cls, values, source=f"long2short.{cls.__name__}")


def run_merge(ctx: Context) -> dict[str, Any]:
    settings = ctx.cfg.merge
    if not settings.short_model:
        raise OpenK1Error("long2short: method merge needs merge.short_model (a short-CoT model "
                          "of the long model's lineage)")
    return merge_stage.run(merge_stage.MergeConfig(models=[ctx.cfg.model, settings.short_model],
                                                   weights=settings.weights, out=str(ctx.root / "merge")))


def run_shortest_rs(ctx: Context) -> dict[str, Any]:
    """`shortest_rs_rounds` rounds of: sample, keep the shortest correct, SFT; round 1 uses the
    shared samples of the long model, round r > 1 samples the model of round r - 1."""
    rounds, model, summary = ctx.cfg.shortest_rs_rounds, ctx.cfg.model, {}
    for r in range(1, rounds + 1):
        samples = ctx.samples() if r == 1 else draw_samples(ctx.cfg, ctx.root, model, r)
        rows = shortest_rows(*samples)
        if not rows:
            raise OpenK1Error(f"long2short: no correct sample to keep for shortest rejection sampling (round {r})")
        name = "shortest_rs" if r == rounds else f"shortest_rs_round{r}"
        write_jsonl(ctx.root / f"{name}.jsonl", rows)
        cfg = ctx.stage(SFTConfig, ctx.cfg.shortest_rs, model=model, data=str(ctx.root / f"{name}.jsonl"),
                        out=str(ctx.root / name))
        summary = {**sft_stage.run(cfg), "rows": len(rows), "rounds": r}
        model = summary["model"]
    return summary


def run_dpo(ctx: Context) -> dict[str, Any]:
    rows = preference_pairs(*ctx.samples(), ctx.cfg.pairs.length_ratio, ctx.cfg.pairs.pairs_per_prompt)
    if not rows:
        raise OpenK1Error("long2short: no preference pair (no prompt with a correct sample and a "
                          "wrong or much longer one)")
    write_jsonl(ctx.root / "dpo_pairs.jsonl", rows)
    cfg = ctx.stage(DPOConfig, ctx.cfg.dpo, model=ctx.cfg.model,
                    data=str(ctx.root / "dpo_pairs.jsonl"), out=str(ctx.root / "dpo"))
    return dpo_stage.run(cfg)


def run_rl(ctx: Context) -> dict[str, Any]:
    cfg = ctx.stage(RLConfig, ctx.cfg.rl, model=ctx.cfg.model, data=ctx.cfg.data,
                    out=str(ctx.root / "rl"), eval_data="", rewards=ctx.cfg.rewards.model_dump())
    return rl_stage.run(cfg)


# method -> the function that makes its model (its summary has `model`)
METHODS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "merge": run_merge, "shortest_rs": run_shortest_rs, "dpo": run_dpo, "rl": run_rl,
}


def evaluate_model(path: str, held_out: list[Problem], cfg: Long2ShortConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    model, tokenizer = load_model(path, prompts=cfg, device=runtime.resolve_device(cfg.device))
    result = evaluate(model, tokenizer, held_out, cfg.eval, rewards=cfg.rewards)
    return {"accuracy": result["accuracy"], "mean_tokens": result["mean_tokens"],
            "accuracy_by_difficulty": result["accuracy_by_difficulty"], "model": path,
            "eval_seconds": time.perf_counter() - t0}


def reference_entry(cfg: Long2ShortConfig, held_out: list[Problem]) -> dict[str, Any]:
    """The long model on the held-out set: from `reference` (a summary.json) or evaluated here."""
    if cfg.reference:
        summary = json.loads(Path(cfg.reference).read_text())
        return {"name": "long", "model": cfg.model,
                **{k: summary[k] for k in ("accuracy", "mean_tokens")}}
    return {"name": "long", **evaluate_model(cfg.model, held_out, cfg)}


def compare(entry: dict[str, Any], long: dict[str, Any]) -> dict[str, Any]:
    """Token reduction (fraction of the long model's mean tokens saved) and accuracy change."""
    return {**entry, "token_reduction": 1.0 - entry["mean_tokens"] / max(long["mean_tokens"], 1e-9),
            "accuracy_delta": entry["accuracy"] - long["accuracy"]}


def table(entries: list[dict[str, Any]], long: dict[str, Any]) -> str:
    lines = ["| method | held-out accuracy | mean tokens | tokens saved | accuracy change | train s |",
             "|---|---|---|---|---|---|",
             f"| long (reference) | {100 * long['accuracy']:.1f}% | {long['mean_tokens']:.1f} | - | - | - |"]
    lines += [f"| {e['name']} | {100 * e['accuracy']:.1f}% | {e['mean_tokens']:.1f} | "
              f"{100 * e['token_reduction']:.0f}% | {100 * e['accuracy_delta']:+.1f} pts | "
              f"{e['train_seconds']:.0f} |" for e in entries]
    return "\n".join(lines)


def run(cfg: Long2ShortConfig) -> dict[str, Any]:
    if not (cfg.model and cfg.data and cfg.eval_data):
        raise OpenK1Error("long2short: needs --model (the long-CoT RL model), --data (training "
                          "problems) and eval_data (held-out problems)")
    with StageRun(cfg, tensorboard=False) as frame:
        held_out = load_problems(cfg.eval_data)
        train = load_problems(cfg.data)   # the training problems are checked before anything is written
        if any(p.images for p in held_out + train):
            check_vision(cfg)
        frame.begin()
        return _run_methods(cfg, frame, held_out)


def check_vision(cfg: Long2ShortConfig) -> None:
    """Problems with images: the long model (and the short model a merge averages it with) must
    be vision-language models."""
    from openk1.models.io import model_dir
    from openk1.models.vision import is_vision

    merged = [cfg.merge.short_model] if "merge" in cfg.methods and cfg.merge.short_model else []
    for path in [cfg.model, *merged]:
        if (model_dir(path) / "config.json").is_file() and not is_vision(path):   # (a hub name: load_model's to check)
            raise OpenK1Error(f"long2short: problems with images need a vision-language model; {path} is text "
                              "only (make one with `openk1 init-model --set vision=true`)")


def _run_methods(cfg: Long2ShortConfig, frame: StageRun, held_out: list[Problem]) -> dict[str, Any]:
    """The long model's figures, then each method trained and evaluated; the table and plot."""
    bar = tqdm(total=len(cfg.methods) + 1, desc="long2short", unit="method", dynamic_ncols=True)
    bar.set_postfix_str("evaluating the long model")
    long = reference_entry(cfg, held_out)
    bar.update()
    ctx, entries = Context(cfg, frame.path), []
    t0 = time.perf_counter()
    if {"shortest_rs", "dpo"} & set(cfg.methods):
        bar.set_postfix_str("sampling")
        ctx.samples()                   # drawn once for both, timed on their own
    sample_seconds = time.perf_counter() - t0
    for method in cfg.methods:
        bar.set_postfix_str(method)
        t0 = time.perf_counter()
        made = METHODS[method](ctx)
        entry = {"name": f"l2s_{method}", "train_seconds": time.perf_counter() - t0,
                 **evaluate_model(made["model"], held_out, cfg)}
        entries.append(compare(entry, long))
        bar.update()
    bar.close()
    text = table(entries, long)
    plot = plot_tradeoff(entries, long, frame.path / "tradeoff.png")
    summary = frame.finish({"reference": long, "stages": entries, **{e["name"]: e for e in entries},
                            "table": text, "plot": str(plot), "sample_seconds": sample_seconds})
    print(text)
    return summary
