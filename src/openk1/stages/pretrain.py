"""`openk1 pretrain`: next-token prediction in stages with the shared LM trainer (report §2.5.1).

    base -> cooldown (curated + synthetic mix, annealed LR) -> long-context activation
    (4k -> 32k -> 128k, RoPE base raised to 1,000,000, 40% long / 60% ordinary data)

Rows carry `text`; every token is trained. Documents longer than a stage's `max_seq_len` are
split into chunks by default (`overlong: split`; `truncate` / `drop` also counted). The stages
live in `stages` (presets/pretrain_k15.yaml mirrors the report; presets/pretrain_demo.yaml is the
CPU-sized copy). `make_corpus` writes the demo's synthetic corpus: arithmetic facts (base),
worked column additions (cooldown) and long multi-problem documents (long-context).
Departures: no vision data; the token budgets of the report's stages are not published, so the
preset's budgets are ours.
"""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from openk1.config import Section
from openk1.data.io import write_jsonl
from openk1.data.packing import OverlongRule, encode_row
from openk1.data.synthetic import long_response, operands, prompt_text
from openk1.frame import StageRun
from openk1.models.io import load_model
from openk1.schedules import Stage
from openk1.trainer import LMConfig, model_path, packed_forward, train_lm


class PretrainConfig(LMConfig):
    overlong: OverlongRule = Field("split",
                                   description="a document longer than max_seq_len: split into rows, truncate or drop")
    stages: list[Stage] = Field(
        default_factory=lambda: [Stage(name="base", epochs=1)],
        description="the staged schedule (report §2.5): budget, length, mixture and LR per stage")


def run(cfg: PretrainConfig) -> dict[str, Any]:
    with StageRun(cfg) as frame:
        model, tokenizer = load_model(model_path(cfg, frame.dir), prompts=cfg)
        torch.manual_seed(cfg.seed)
        summary: dict[str, Any] = train_lm(model, tokenizer, cfg, list(cfg.stages),
                                           partial(encode_row, tokenizer=tokenizer), frame.dir)
        summary["model"] = frame.save_model(model, tokenizer)
        frame.note_forward("update", packed_forward(model))
        return frame.finish(summary)


class CorpusConfig(Section):
    """Sizes of the demo's synthetic pretraining corpus (documents per part)."""

    seed: int = Field(0, description="seed of the corpus")
    base_docs: int = Field(3000, ge=0, description="lines of addition facts and equations")
    cooldown_docs: int = Field(3000, ge=0, description="worked column additions (long-CoT-like traces)")
    long_docs: int = Field(300, ge=0, description="several worked problems in one document")
    problems_per_long_doc: int = Field(4, gt=0, description="worked problems per long document")
    max_difficulty: int = Field(2, ge=1, le=5, description="hardest level (data/synthetic.py LEVELS)")
    equations_per_doc: int = Field(8, gt=0, description="lines per base document")
    equation_share: float = Field(0.5, ge=0.0, le=1.0,
                                  description="lines that are whole-problem equations (rest: digit facts)")
    instruction: str = Field("Show your work.\n", description="prefixes every worked solution (longcot's template)")


def fact_doc(rng: random.Random, cfg: CorpusConfig, exclude: set[str]) -> str:
    """A few single-digit facts (with and without a carry-in) and equations, one per line."""
    lines = []
    for _ in range(cfg.equations_per_doc):
        if rng.random() >= cfg.equation_share:
            x, y, c = rng.randint(0, 9), rng.randint(0, 9), rng.randint(0, 1)
            lines.append(f"{x}+{y}+{c}={x + y + c}" if c else f"{x}+{y}={x + y}")
        else:
            a, b = operands(rng, rng.randint(1, cfg.max_difficulty))
            if prompt_text(a, b) not in exclude:
                lines.append(f"{a}+{b}={a + b}")
    return "\n".join(lines)


def worked_doc(rng: random.Random, cfg: CorpusConfig, exclude: set[str]) -> str:
    """Instruction + one problem + its column-by-column solution (the long-CoT trace format)."""
    while True:
        a, b = operands(rng, rng.randint(1, cfg.max_difficulty))
        if prompt_text(a, b) not in exclude:
            return cfg.instruction + prompt_text(a, b) + long_response(a, b, rng, 0.15)


def worked_text(row: dict[str, Any], cfg: CorpusConfig) -> str:
    """A task row (synthetic.make_row) as a worked document, e.g. for an evaluation-loss set."""
    text: str = cfg.instruction + row["prompt"] + row["long_response"]
    return text


def make_corpus(cfg: CorpusConfig, root: str | Path, exclude: set[str]) -> dict[str, str]:
    """Write base.jsonl, cooldown.jsonl and long.jsonl (`text` rows) under root; problems whose
    prompt is in `exclude` (the held-out set) never appear. Returns {part: path}."""
    rng = random.Random(f"corpus-{cfg.seed}")
    parts = {
        "base": [fact_doc(rng, cfg, exclude) for _ in range(cfg.base_docs)],
        "cooldown": [worked_doc(rng, cfg, exclude) for _ in range(cfg.cooldown_docs)],
        "long": ["\n\n".join(worked_doc(rng, cfg, exclude) for _ in range(cfg.problems_per_long_doc))
                 for _ in range(cfg.long_docs)],
    }
    paths = {}
    for name, docs in parts.items():
        paths[name] = str(Path(root) / f"{name}.jsonl")
        write_jsonl(paths[name], [{"text": d} for d in docs])
    return paths
