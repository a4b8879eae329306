r"""`openk1 curate`: build the RL prompt set (report §2.1).

    rows -> reference answer check -> format filter (multiple choice, true/false, proof)
         -> exact + near-duplicate removal, decontamination against eval sets
         -> domain tags -> easy-to-hack filter* -> difficulty (pass rate)* -> balance -> report
                                                                      (* needs a model)

Each filter (its `curate.<name>` settings, its logic and its step over the rows) lives in one
module of openk1/curate/: format.py, dedup.py, tagging.py, hack.py, difficulty.py, balance.py.
This module composes the config, runs the filters in order and writes the run directory.

Outputs in DIR: curated.jsonl (kept rows: every input field, plus `domain`/`tags` where missing,
`pass_rate` and `difficulty` when a model ran), dropped.jsonl (each dropped row with `reason`,
and `reason_detail` / `duplicate_of` / `hack_hits` / `pass_rate` where they apply),
summary.json (rows removed per filter, pass-rate histogram, domain mix), filters.png,
pass_rate.png, domains.png, config.yaml, and cache.jsonl (model results per prompt).

Departures from the report:
- The easy-to-hack filter runs before the difficulty estimate: it is the cheaper of the two
  (8 short answers against 10 full solutions), and each prompt it drops saves 10 long samples.
- Only trivial prompts (pass rate 1) are dropped by default; unreachable ones (pass rate 0) are
  labelled and kept unless `difficulty.drop_unreachable` is set: a weak SFT model fails many
  prompts that RL can still learn to solve.
- Balancing only downsamples (no prompt is repeated to reach a target proportion).
- Prompts are fed raw, as the RL stage feeds them (no chat template).
- Rows whose type has no rule-based verifier (`freeform`) skip both model filters.

Problems with images (docs/vision.md "DPO, reward models, curate and long2short with images"):
their images are read when the rows are (a bad one names the file, row and image) and written
to curated.jsonl / dropped.jsonl as absolute paths or data URIs; duplicates and contamination
need the same images; the model filters show them to a vision-language model (a text model is
refused for them) and cache per prompt and images.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import Field

from openk1.config import StageConfig
from openk1.curate.balance import BalanceSettings, balance_rows, check_targets
from openk1.curate.dedup import DedupSettings, dedup
from openk1.curate.difficulty import DifficultySettings, pass_rate_summary, rate_difficulty
from openk1.curate.format import FormatSettings, check_rows, format_filter
from openk1.curate.hack import HackSettings, hack_filter
from openk1.curate.rows import Row, alive
from openk1.curate.sampler import Sampler
from openk1.curate.tagging import TaggingSettings, tag
from openk1.data.io import location, write_jsonl
from openk1.data.prompt_cache import PromptCache, model_fingerprint
from openk1.data.sources import read_source
from openk1.distributed import runtime
from openk1.errors import OpenK1Error
from openk1.frame import StageRun
from openk1.report.run_dir import atomic_file
from openk1.rewards.scoring import VERIFIERS
from openk1.rollout.engine import RolloutEngine
from openk1.rollout.hf import HFEngine, SamplingConfig

# every reason a row can be dropped for, in pipeline order
REASONS: tuple[str, ...] = ("no_answer", "multiple_choice", "true_false", "proof", "duplicate",
                            "near_duplicate", "contaminated", "easy_to_hack", "trivial",
                            "unreachable", "balance")


class CurateConfig(StageConfig):
    # --resume reruns the filters with the model results cached in DIR/cache.jsonl (keyed by
    # prompt, model and sampling settings): any filter setting may change, the model and data not
    resume_may_change = (*StageConfig.resume_may_change, "format", "dedup", "hack", "difficulty",
                         "tagging", "balance", "prompts_per_batch", "cache", "progress")


    format: FormatSettings = Field(FormatSettings(),
                                   description="format filter: a checkable reference answer (report §2.1)")
    dedup: DedupSettings = Field(DedupSettings(), description="exact and near-duplicate prompts; decontamination")
    hack: HackSettings = Field(HackSettings(),
                               description="easy-to-hack filter: right without a chain of thought -> dropped")
    difficulty: DifficultySettings = Field(DifficultySettings(),
                                           description="pass rate and difficulty label per prompt")
    tagging: TaggingSettings = Field(TaggingSettings(), description="domain tags of rows that carry none")
    balance: BalanceSettings = Field(BalanceSettings(), description="downsample domains to target proportions")
    prompts_per_batch: int = Field(32, gt=0, description="prompts per generation batch (the unit cached and resumed)")
    score_workers: int = Field(0, ge=0, description="> 0: verifiers in that many processes")
    cache: bool = Field(True, description="DIR/cache.jsonl: reuse model results of earlier runs")
    progress: bool = Field(True, description="show progress bars")


# ---------------------------------------------------------------------------------------------
# The pipeline

def curate(problems_rows: Iterable[dict[str, Any]], cfg: CurateConfig, model: Any = None,
           tokenizer: Any = None, *, engine_for: Callable[[SamplingConfig], RolloutEngine] | None = None,
           where: Sequence[str] = ()) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(kept rows, dropped rows, summary), both row lists in input order.

    Without `model` (and `engine_for`) only the model-free filters run. `engine_for(sampling)`
    gives the rollout engine a model filter samples with (default: HFEngine over `model`; any
    RolloutEngine, e.g. a vLLM one); with `cfg.out` and `cfg.cache`, model results are cached in
    `cfg.out/cache.jsonl`. `where[i]` names row i in errors (`read_located`; by default
    `cfg.data: row i+1`).
    """
    rows = [Row(n, dict(r), where[n - 1] if where else location(cfg.data.path or "rows", n))
            for n, r in enumerate(problems_rows, start=1)]
    counts: Counter[str] = Counter({r: 0 for r in REASONS})
    flagged: Counter[str] = Counter({"trivial": 0, "unreachable": 0})
    check_rows(rows, cfg.format, counts)
    if cfg.format.enabled:
        format_filter(rows, counts)
    dedup(rows, cfg.dedup, cfg.seed, counts)
    sources = tag(rows, cfg.tagging, model, tokenizer)
    check_targets(rows, cfg.balance.targets)
    if engine_for is None and model is not None:
        engine_for = partial(HFEngine, model, tokenizer)   # engine_for(sampling)
    rates: list[float] = []
    sampler = None
    if engine_for is not None:
        cache = PromptCache(Path(cfg.out) / "cache.jsonl" if cfg.out and cfg.cache else None)
        sampler = Sampler(engine_for, cache, model_fingerprint(cfg.model, model), cfg.seed,
                          cfg.prompts_per_batch, cfg.score_workers, cfg.progress)
        if cfg.hack.enabled:
            hack_filter(rows, cfg.hack, sampler, counts)
        if cfg.difficulty.enabled:
            rates = rate_difficulty(rows, cfg.difficulty, sampler, counts, flagged)
    before_balance = Counter(str(r.data["domain"]) for r in alive(rows))
    if cfg.balance.targets:
        balance_rows(rows, cfg.balance.targets, cfg.seed, counts)
    kept = [r.data for r in alive(rows)]
    dropped = [r.data for r in rows if r.reason]
    summary = {
        "input_rows": len(rows), "kept_rows": len(kept), "dropped_rows": len(dropped),
        "removed": {r: counts[r] for r in REASONS},
        "model_filters": sampler is not None,
        "kept_at_extremes": dict(flagged),
        "not_scored": len([r for r in alive(rows) if r.problem and r.problem.type not in VERIFIERS]),
        "tagged_by": dict(sources),
        "domain_mix": {"before_balance": dict(sorted(before_balance.items())),
                       "kept": dict(sorted(Counter(str(r["domain"]) for r in kept).items()))},
        "generation": sampler.stats if sampler else {},
    }
    if cfg.difficulty.enabled and sampler is not None:
        summary.update(pass_rate_summary(rates, cfg.difficulty))
    return kept, dropped, summary


# ---------------------------------------------------------------------------------------------
# Report

def _bar_png(path: Path, title: str, series: dict[str, dict[str, int]], xlabel: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = list(dict.fromkeys(k for s in series.values() for k in s))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(names) + 2), 3.4))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
        bars = ax.bar(xs, [values.get(n, 0) for n in names], width=width, label=label)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("rows")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def write_report(out: Path, kept: list[dict[str, Any]], dropped: list[dict[str, Any]],
                 summary: dict[str, Any]) -> dict[str, Any]:
    """curated.jsonl, dropped.jsonl and the PNG plots in the run directory `out`; the summary
    with their paths."""
    write_jsonl(out / "curated.jsonl", kept)
    write_jsonl(out / "dropped.jsonl", dropped)
    plots = [_bar_png(out / "filters.png", "rows removed by each filter",
                      {"removed": summary["removed"]}),
             _bar_png(out / "domains.png", "domain mix", summary["domain_mix"])]
    if "pass_rate_histogram" in summary:
        plots.append(_bar_png(out / "pass_rate.png", "pass rate per prompt (before dropping)",
                              {"prompts": summary["pass_rate_histogram"]}, xlabel="pass rate"))
    return {**summary, "files": {name: str(out / name) for name in ("curated.jsonl", "dropped.jsonl")},
            "plots": [str(p) for p in plots]}


def run(cfg: CurateConfig) -> dict[str, Any]:
    if not cfg.data:
        raise OpenK1Error("curate: needs --data FILE (the candidate problems)")
    with StageRun(cfg, tensorboard=False) as frame:
        located = read_source(cfg.data)   # a preset's rows become openk1's (docs/data.md)
        model, tokenizer = None, None
        if cfg.model:
            from openk1.models.io import load_model

            model, tokenizer = load_model(cfg.model, prompts=cfg, device=runtime.resolve_device(cfg.device))
            uses_model = cfg.hack.enabled or cfg.difficulty.enabled or cfg.tagging.method == "model"
            if uses_model and any(row.get("images") for _, row in located):
                from openk1.models.vlm import require_processor

                require_processor(tokenizer)   # the model filters show the images: refused before writing
        frame.begin()
        kept, dropped, summary = curate([row for _, row in located], cfg, model, tokenizer,
                                        where=[where for where, _ in located])
        return frame.finish(write_report(frame.path, kept, dropped, summary))
