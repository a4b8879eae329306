r"""`openk1 curate`: build the RL prompt set (report §2.1).

    rows -> reference answer check -> format filter (multiple choice, true/false, proof)
         -> exact + near-duplicate removal, decontamination against eval sets
         -> domain tags -> easy-to-hack filter* -> difficulty (pass rate)* -> balance -> report
                                                                      (* needs a model)

Outputs in DIR: curated.jsonl (kept rows: every input field, plus `domain`/`tags` where missing,
`pass_rate` and `difficulty` when a model ran), dropped.jsonl (each dropped row with `reason`,
and `reason_detail` / `duplicate_of` / `hack_hits` / `pass_rate` where they apply),
summary.json (rows removed per filter, pass-rate histogram, domain mix), filters.png,
pass_rate.png, domains.png, config.yaml, and cache.jsonl (model results per prompt).

Difficulty: `difficulty` becomes the pass-rate label ("unreachable" at 0, "trivial" at 1, else
`bin_labels` split at `bin_edges`); a `difficulty` the row already had moves to
`difficulty_given`. A response counts as right when its reward (`score_many`, the training
verifier) is 1.

Departures from the report:
- The easy-to-hack filter runs before the difficulty estimate: it is the cheaper of the two
  (8 short answers against 10 full solutions), and each prompt it drops saves 10 long samples.
- Only trivial prompts (pass rate 1) are dropped by default; unreachable ones (pass rate 0) are
  labelled and kept unless `difficulty.drop_unreachable` is set: a weak SFT model fails many
  prompts that RL can still learn to solve.
- Balancing only downsamples (no prompt is repeated to reach a target proportion).
- Prompts are fed raw, as the RL stage feeds them (no chat template).
- Rows whose type has no rule-based verifier (`freeform`) skip both model filters.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field, field_validator, model_validator

from openk1.config import Section, StageConfig
from openk1.data.curate import (
    NearDupIndex,
    balance_mask,
    detect_format,
    keyword_tags,
    normalize_text,
    unusable_answer,
)
from openk1.data.io import iter_located, location, read_located, to_problem, write_jsonl
from openk1.data.padding import pad
from openk1.data.prompt_cache import PromptCache, model_fingerprint
from openk1.errors import OpenK1Error
from openk1.report.run_dir import RunDir, atomic_file, open_run
from openk1.rewards.scoring import VERIFIERS, score_many
from openk1.rollout.generator import EngineGenerator, Generator
from openk1.rollout.hf import SamplingConfig
from openk1.types import PROBLEM_TYPES, Problem

# every reason a row can be dropped for, in pipeline order
REASONS: tuple[str, ...] = ("no_answer", "multiple_choice", "true_false", "proof", "duplicate",
                            "near_duplicate", "contaminated", "easy_to_hack", "trivial",
                            "unreachable", "balance")
DEFAULT_HACK_TEMPLATE = ("{prompt}\n\nAnswer directly, without any working or explanation: "
                         "write only the final answer in \\boxed{}.")


class FormatSettings(Section):
    enabled: bool = True
    max_answer_chars: int = Field(300, gt=0)   # a longer reference is a proof or essay: no_answer


class DedupSettings(Section):
    exact: bool = True
    near: bool = True
    threshold: float = Field(0.7, gt=0.0, le=1.0)   # Jaccard of token 3-gram shingles for a near duplicate
    shingle_tokens: int = Field(3, gt=0)
    num_perm: int = Field(128, gt=0)   # MinHash permutations = bands * rows per band
    bands: int = Field(32, gt=0)
    same_numbers: bool = True       # near duplicates must hold the same numbers
    # evaluation sets (JSONL / Parquet / HF dataset dir) whose prompts must not be trained on
    decontaminate: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _whole_bands(self) -> DedupSettings:
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm ({self.num_perm}) must be a multiple of bands ({self.bands})")
        return self


class HackSettings(Section):
    """Easy-to-hack filter: answer with no chain of thought; right within `attempts` -> drop."""

    enabled: bool = True
    attempts: int = Field(8, gt=0)  # report §2.1: N = 8
    # `{prompt}` is replaced by the prompt; quote it for YAML: --set 'hack.template="{prompt}"'
    template: str = DEFAULT_HACK_TEMPLATE
    temperature: float = Field(1.0, ge=0.0)   # 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(32, gt=0)
    batch_size: int = Field(256, gt=0)   # sequences decoded together

    @field_validator("template")
    @classmethod
    def _has_prompt(cls, template: str) -> str:
        if "{prompt}" not in template:
            raise ValueError("must contain {prompt}")
        return template


class DifficultySettings(Section):
    """Pass rate of `samples_per_prompt` answers at `temperature` (report §2.1: 10, high T)."""

    enabled: bool = True
    samples_per_prompt: int = Field(10, gt=0)
    temperature: float = Field(1.0, ge=0.0)   # 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(1024, gt=0)
    batch_size: int = Field(256, gt=0)   # sequences decoded together
    bin_edges: list[float] = Field(default_factory=lambda: [0.3, 0.7])
    bin_labels: list[str] = Field(default_factory=lambda: ["hard", "medium", "easy"])
    drop_trivial: bool = True       # pass rate 1
    drop_unreachable: bool = False  # pass rate 0

    @model_validator(mode="after")
    def _bins(self) -> DifficultySettings:
        edges = self.bin_edges
        if len(self.bin_labels) != len(edges) + 1:
            raise ValueError("bin_labels needs one label more than bin_edges")
        if any(not 0 < e < 1 for e in edges) or edges != sorted(set(edges)):
            raise ValueError("bin_edges must increase strictly inside (0, 1)")
        return self


class TaggingSettings(Section):
    method: str = "keywords"        # keywords | model (likelihood of each domain name)
    domains: list[str] = Field(default_factory=lambda: [
        "math", "physics", "chemistry", "biology", "code", "general"])
    template: str = "{prompt}\nDomain:"

    @field_validator("method")
    @classmethod
    def _known(cls, method: str) -> str:
        if method not in ("keywords", "model"):
            raise ValueError("must be keywords or model")
        return method


class BalanceSettings(Section):
    # domain -> proportion (normalised; 0 drops the domain); empty = keep the mix as it is
    targets: dict[str, Annotated[float, Field(ge=0.0)]] = Field(default_factory=dict)


class CurateConfig(StageConfig):
    # --resume reruns the filters with the model results cached in DIR/cache.jsonl (keyed by
    # prompt, model and sampling settings): any filter setting may change, the model and data not
    resume_may_change = (*StageConfig.resume_may_change, "format", "dedup", "hack", "difficulty",
                         "tagging", "balance", "prompts_per_batch", "cache", "progress")

    format: FormatSettings = FormatSettings()
    dedup: DedupSettings = DedupSettings()
    hack: HackSettings = HackSettings()
    difficulty: DifficultySettings = DifficultySettings()
    tagging: TaggingSettings = TaggingSettings()
    balance: BalanceSettings = BalanceSettings()
    prompts_per_batch: int = Field(32, gt=0)   # prompts per generation batch (the unit cached and resumed)
    score_workers: int = Field(0, ge=0)   # >0: verifiers in that many processes
    cache: bool = True              # DIR/cache.jsonl: reuse model results of earlier runs
    progress: bool = True


_KIND_SEED = {"hack": 0, "difficulty": 500_009}


class _Sampler:
    """Batched, cached, resumable 'k answers per prompt -> rewards' for one curate run."""

    def __init__(self, generator: Generator, cache: PromptCache, fingerprint: str, seed: int,
                 prompts_per_batch: int, score_workers: int, progress: bool) -> None:
        self.generator, self.cache, self.fingerprint = generator, cache, fingerprint
        self.seed, self.per_batch = seed, prompts_per_batch
        self.workers, self.progress = score_workers, progress
        self.stats: dict[str, dict[str, int]] = {}

    def key(self, kind: str, text: str, problem: Problem, k: int, sampling: SamplingConfig) -> str:
        settings = sampling.model_dump(exclude={"batch_size"})
        parts = [kind, text, problem.type, problem.answer, list(problem.tests), self.fingerprint,
                 settings, k, self.seed, self.per_batch]
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def rewards(self, kind: str, problems: list[Problem], texts: list[str], k: int,
                sampling: SamplingConfig) -> list[list[float]]:
        """k rewards per prompt. Batches are fixed slices of the full list and batch b is seeded
        by (seed, kind, b), so a resumed run regenerates exactly the batches an uninterrupted
        run would have, with the same seeds."""
        from tqdm import tqdm

        keys = [self.key(kind, t, p, k, sampling) for t, p in zip(texts, problems)]
        results = [self.cache.get(key) for key in keys]
        stats = {"prompts": len(keys), "cached": sum(r is not None for r in results),
                 "generated": 0, "generation_calls": 0}
        starts = range(0, len(keys), self.per_batch)
        for b, start in enumerate(tqdm(starts, desc=f"curate {kind}", unit="batch",
                                       disable=not self.progress or not starts)):
            todo = [i for i in range(start, min(start + self.per_batch, len(keys))) if results[i] is None]
            if not todo:
                continue
            seed = self.seed * 1_000_003 + _KIND_SEED[kind] + b
            answers = self.generator.generate([texts[i] for i in todo], k, sampling, seed)
            repeated = [problems[i] for i in todo for _ in range(k)]
            scores = [s.reward for s in score_many(answers, repeated, self.workers)]
            fresh = {keys[i]: scores[j * k:(j + 1) * k] for j, i in enumerate(todo)}
            self.cache.add(fresh)
            for i in todo:
                results[i] = fresh[keys[i]]
            stats["generated"] += len(todo)
            stats["generation_calls"] += 1
        self.stats[kind] = stats
        return [r if r is not None else [] for r in results]


def correct(rewards: Iterable[float]) -> int:
    """Number of right answers (reward 1, the verifier's full credit)."""
    return sum(r >= 1.0 for r in rewards)


def difficulty_label(pass_rate: float, settings: DifficultySettings) -> str:
    """'unreachable' at 0, 'trivial' at 1, else bin i of [0, e1), [e1, e2), ..., [e_m, 1).

    >>> difficulty_label(0.3, DifficultySettings())
    'medium'
    """
    if pass_rate <= 0:
        return "unreachable"
    if pass_rate >= 1:
        return "trivial"
    return settings.bin_labels[sum(pass_rate >= e for e in settings.bin_edges)]


# ---------------------------------------------------------------------------------------------
# The pipeline

@dataclass
class _Row:
    n: int                          # 1-based input row number
    data: dict[str, Any]            # the input row (a copy) + the fields curate adds
    where: str = ""                 # where errors say the row is (data/io.py `location`)
    problem: Problem | None = None
    reason: str = ""

    @property
    def name(self) -> str:
        return str(self.data["id"]) if self.data.get("id") not in (None, "") else f"row {self.n}"


def _drop(row: _Row, reason: str, counts: Counter[str], **fields: Any) -> None:
    row.reason = reason
    row.data.update({"reason": reason, **fields})
    counts[reason] += 1


def _alive(rows: list[_Row]) -> list[_Row]:
    return [r for r in rows if not r.reason]


def _check_rows(rows: list[_Row], settings: FormatSettings, counts: Counter[str]) -> None:
    """A row with no checkable reference is dropped; a row that is not a problem is an error."""
    for row in rows:
        where = row.where
        prompt = row.data.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            got = "missing field 'prompt'" if prompt is None else (
                f"field 'prompt' must be str, got {type(prompt).__name__}"
                if not isinstance(prompt, str) else "field 'prompt' is empty")
            raise OpenK1Error(f"{where}: {got}")
        if row.data.get("type", "math") not in PROBLEM_TYPES:
            raise OpenK1Error(f"{where}: field 'type' must be one of {', '.join(PROBLEM_TYPES)}, "
                              f"got {row.data.get('type')!r}")
        detail = unusable_answer(row.data, settings.max_answer_chars)
        if detail:
            _drop(row, "no_answer", counts, reason_detail=detail)
        else:
            row.problem = to_problem(row.data, where)


def _format_filter(rows: list[_Row], counts: Counter[str]) -> None:
    for row in _alive(rows):
        assert row.problem is not None
        hit = detect_format(row.problem.prompt, row.problem.answer)
        if hit is not None:
            _drop(row, hit.kind, counts, reason_detail=hit.evidence)


def _eval_prompts(paths: list[str]) -> list[tuple[str, str]]:
    """(where, prompt) of every row of the decontamination sets."""
    out = []
    for path in paths:
        for where, row in iter_located(path):
            prompt = row.get("prompt")
            if not isinstance(prompt, str):
                raise OpenK1Error(f"{where}: missing field 'prompt' (decontamination set)")
            out.append((where, prompt))
    return out


def _dedup(rows: list[_Row], settings: DedupSettings, seed: int, counts: Counter[str]) -> None:
    """Contamination first (a prompt of an eval set is contaminated even when repeated), then
    exact duplicates, then near duplicates of an earlier kept row."""
    def index() -> NearDupIndex:
        return NearDupIndex(settings.threshold, settings.shingle_tokens, settings.num_perm,
                            settings.bands, seed, settings.same_numbers)

    evals, within = index(), index()
    eval_exact: dict[str, str] = {}
    for where, prompt in _eval_prompts(settings.decontaminate):
        eval_exact.setdefault(normalize_text(prompt), where)
        if settings.near:
            evals.add(where, prompt)
    seen: dict[str, str] = {}
    for row in _alive(rows):
        assert row.problem is not None
        prompt, key = row.problem.prompt, normalize_text(row.problem.prompt)
        if key in eval_exact:
            _drop(row, "contaminated", counts, reason_detail=f"same prompt as {eval_exact[key]}")
        elif settings.near and (hit := evals.query(prompt)):
            _drop(row, "contaminated", counts,
                  reason_detail=f"near duplicate of {hit[0]} (Jaccard {hit[1]:.2f})")
        elif settings.exact and key in seen:
            _drop(row, "duplicate", counts, duplicate_of=seen[key])
        elif settings.near and (hit := within.add_unless_duplicate(row.name, prompt)):
            _drop(row, "near_duplicate", counts, duplicate_of=hit[0],
                  reason_detail=f"Jaccard {hit[1]:.2f}")
        else:
            seen.setdefault(key, row.name)


@torch.no_grad()
def model_domains(model: Any, tokenizer: Any, prompts: list[str], domains: list[str],
                  template: str) -> list[str]:
    """Zero-shot tagger: the domain whose name the model finds likeliest after `template`
    (mean log-prob per token of " <domain>")."""
    from openk1.models.forward import encode_prompts, eval_mode, response_logprobs

    names = [tokenizer(" " + d, add_special_tokens=False)["input_ids"] for d in domains]
    response, mask = pad(names, tokenizer.pad_token_id)                       # [D, T]
    out = []
    with eval_mode(model):
        for prompt in prompts:
            ids, prompt_mask = encode_prompts(tokenizer, [template.replace("{prompt}", prompt)] * len(domains))
            logp = response_logprobs(model, ids, prompt_mask, response, mask)  # [D, T]
            out.append(domains[int((logp.sum(-1) / mask.sum(-1)).argmax())])
    return out


def _tag(rows: list[_Row], settings: TaggingSettings, model: Any, tokenizer: Any) -> Counter[str]:
    """Fill a missing `domain` / `tags`; given ones are kept. Returns rows per tag source."""
    sources: Counter[str] = Counter()
    alive = _alive(rows)
    need = [r for r in alive if not r.data.get("domain")]
    by_model: dict[int, str] = {}
    if settings.method == "model" and need:
        if model is None:
            raise OpenK1Error("tagging.method=model needs a model (--model)")
        prompts = [r.problem.prompt for r in need if r.problem is not None]
        by_model = dict(zip([r.n for r in need], model_domains(model, tokenizer, prompts,
                                                                settings.domains, settings.template)))
    for row in alive:
        assert row.problem is not None
        domain, tags = keyword_tags(row.problem.prompt, row.problem.type)
        if row.data.get("domain"):
            sources["given"] += 1
        else:
            row.data["domain"] = by_model.get(row.n, domain)
            sources[settings.method] += 1
        if not row.data.get("tags"):
            row.data["tags"] = tags if row.data["domain"] == domain else [row.data["domain"]]
    return sources


def _scorable(rows: list[_Row]) -> list[_Row]:
    return [r for r in _alive(rows) if r.problem is not None and r.problem.type in VERIFIERS]


def _hack_filter(rows: list[_Row], settings: HackSettings, sampler: _Sampler, counts: Counter[str]) -> None:
    targets = _scorable(rows)
    problems = [r.problem for r in targets if r.problem is not None]
    texts = [settings.template.replace("{prompt}", p.prompt) for p in problems]
    sampling = SamplingConfig(temperature=settings.temperature, top_p=settings.top_p,
                              max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size)
    for row, rewards in zip(targets, sampler.rewards("hack", problems, texts, settings.attempts, sampling)):
        hits = correct(rewards)
        if hits:
            _drop(row, "easy_to_hack", counts, hack_hits=hits,
                  reason_detail=f"{hits}/{settings.attempts} answer-only attempts right")


def _difficulty(rows: list[_Row], settings: DifficultySettings, sampler: _Sampler,
                counts: Counter[str], flagged: Counter[str]) -> list[float]:
    """Sets `pass_rate` and the `difficulty` label; returns every pass rate measured."""
    targets = _scorable(rows)
    problems = [r.problem for r in targets if r.problem is not None]
    sampling = SamplingConfig(temperature=settings.temperature, top_p=settings.top_p,
                              max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size)
    k = settings.samples_per_prompt
    rates = []
    for row, rewards in zip(targets, sampler.rewards("difficulty", problems,
                                                     [p.prompt for p in problems], k, sampling)):
        rate = correct(rewards) / k
        rates.append(rate)
        if row.data.get("difficulty") is not None:
            row.data["difficulty_given"] = row.data["difficulty"]
        row.data.update(pass_rate=rate, difficulty=difficulty_label(rate, settings))
        extreme = {1.0: ("trivial", settings.drop_trivial), 0.0: ("unreachable", settings.drop_unreachable)}
        if rate in extreme:
            label, drop = extreme[rate]
            if drop:
                _drop(row, label, counts, reason_detail=f"pass rate {rate:g} over {k} samples")
            else:
                flagged[label] += 1
    return rates


def _check_targets(rows: list[_Row], targets: dict[str, float]) -> None:
    """Fail before any generation when balancing would drop every row."""
    present = {str(r.data["domain"]) for r in _alive(rows)}
    if targets and present and not present & {d for d, t in targets.items() if t > 0}:
        raise OpenK1Error(f"balance.targets names none of the domains present "
                          f"({', '.join(sorted(present))}): every row would be dropped")


def _balance(rows: list[_Row], targets: dict[str, float], seed: int, counts: Counter[str]) -> None:
    alive = _alive(rows)
    keep = balance_mask([str(r.data["domain"]) for r in alive], targets, seed)
    for row, kept in zip(alive, keep):
        if not kept:
            _drop(row, "balance", counts, reason_detail=f"domain {row.data['domain']} over its target")


def curate(problems_rows: Iterable[dict[str, Any]], cfg: CurateConfig, model: Any = None,
           tokenizer: Any = None, *, generator: Generator | None = None,
           where: Sequence[str] = ()) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(kept rows, dropped rows, summary), both row lists in input order.

    Without `model` (and `generator`) only the model-free filters run. `generator` replaces the
    rollout engine (tests, or another engine); with `cfg.out` and `cfg.cache`, model results
    are cached in `cfg.out/cache.jsonl`. `where[i]` names row i in errors (`read_located`; by
    default `cfg.data: row i+1`).
    """
    rows = [_Row(n, dict(r), where[n - 1] if where else location(cfg.data or "rows", n))
            for n, r in enumerate(problems_rows, start=1)]
    counts: Counter[str] = Counter({r: 0 for r in REASONS})
    flagged: Counter[str] = Counter({"trivial": 0, "unreachable": 0})
    _check_rows(rows, cfg.format, counts)
    if cfg.format.enabled:
        _format_filter(rows, counts)
    _dedup(rows, cfg.dedup, cfg.seed, counts)
    sources = _tag(rows, cfg.tagging, model, tokenizer)
    _check_targets(rows, cfg.balance.targets)
    if generator is None and model is not None:
        generator = EngineGenerator(model, tokenizer)
    rates: list[float] = []
    sampler = None
    if generator is not None:
        cache = PromptCache(Path(cfg.out) / "cache.jsonl" if cfg.out and cfg.cache else None)
        sampler = _Sampler(generator, cache, model_fingerprint(cfg.model, model), cfg.seed,
                           cfg.prompts_per_batch, cfg.score_workers, cfg.progress)
        if cfg.hack.enabled:
            _hack_filter(rows, cfg.hack, sampler, counts)
        if cfg.difficulty.enabled:
            rates = _difficulty(rows, cfg.difficulty, sampler, counts, flagged)
    before_balance = Counter(str(r.data["domain"]) for r in _alive(rows))
    if cfg.balance.targets:
        _balance(rows, cfg.balance.targets, cfg.seed, counts)
    kept = [r.data for r in _alive(rows)]
    dropped = [r.data for r in rows if r.reason]
    summary = {
        "input_rows": len(rows), "kept_rows": len(kept), "dropped_rows": len(dropped),
        "removed": {r: counts[r] for r in REASONS},
        "model_filters": sampler is not None,
        "kept_at_extremes": dict(flagged),
        "not_scored": len([r for r in _alive(rows) if r.problem and r.problem.type not in VERIFIERS]),
        "tagged_by": dict(sources),
        "domain_mix": {"before_balance": dict(sorted(before_balance.items())),
                       "kept": dict(sorted(Counter(str(r["domain"]) for r in kept).items()))},
        "generation": sampler.stats if sampler else {},
    }
    if cfg.difficulty.enabled and sampler is not None:
        summary.update(_pass_rate_summary(rates, cfg.difficulty))
    return kept, dropped, summary


def _pass_rate_summary(rates: list[float], settings: DifficultySettings) -> dict[str, Any]:
    k = settings.samples_per_prompt
    hist = Counter(round(r * k) for r in rates)
    labels = Counter(difficulty_label(r, settings) for r in rates)
    order = ["unreachable", *settings.bin_labels, "trivial"]
    return {
        "pass_rate_histogram": {f"{j / k:.2f}": hist[j] for j in range(k + 1)},
        "mean_pass_rate": sum(rates) / len(rates) if rates else None,
        "difficulty_counts": {label: labels[label] for label in order},
    }


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


def write_report(run_dir: RunDir, kept: list[dict[str, Any]], dropped: list[dict[str, Any]],
                 summary: dict[str, Any]) -> dict[str, Any]:
    """curated.jsonl, dropped.jsonl, the PNG plots and summary.json in the run directory."""
    out = run_dir.begin()
    write_jsonl(out / "curated.jsonl", kept)
    write_jsonl(out / "dropped.jsonl", dropped)
    plots = [_bar_png(out / "filters.png", "rows removed by each filter",
                      {"removed": summary["removed"]}),
             _bar_png(out / "domains.png", "domain mix", summary["domain_mix"])]
    if "pass_rate_histogram" in summary:
        plots.append(_bar_png(out / "pass_rate.png", "pass rate per prompt (before dropping)",
                              {"prompts": summary["pass_rate_histogram"]}, xlabel="pass rate"))
    summary = {**summary, "files": {name: str(out / name) for name in ("curated.jsonl", "dropped.jsonl")},
               "plots": [str(p) for p in plots]}
    run_dir.write_summary(summary)
    return summary


def run(cfg: CurateConfig) -> dict[str, Any]:
    if not cfg.data:
        raise OpenK1Error("curate: needs --data FILE (the candidate problems)")
    run_dir = open_run(cfg, tensorboard=False)   # the run-directory contract
    located = read_located(cfg.data)
    model, tokenizer = None, None
    if cfg.model:
        from openk1.models.io import load_model

        model, tokenizer = load_model(cfg.model)
    run_dir.write_config(cfg)
    kept, dropped, summary = curate([row for _, row in located], cfg, model, tokenizer,
                                    where=[where for where, _ in located])
    return write_report(run_dir, kept, dropped, summary)
