"""`openk1 rm train`: train the classic reward model (rewards/reward_model.py) on labelled rows.

Rows: `prompt`, `answer` (the reference), `response`, `label` (1 = the response is correct,
0 = it is not). A seeded `heldout_fraction` of the rows is held out; the model is a sequence
classifier built on any causal-LM directory, trained with cross-entropy, AdamW, warm-up + cosine
LR. Held-out accuracy is logged after every epoch (metrics.jsonl) and reported in summary.json;
DIR/model is the classifier (save_pretrained + tokenizer), ready for `RewardModelVerifier`.

Departure from the report (§2.3.5): its classic RM is a value head on a large model; here it is
transformers' 2-way classification head on the last real token (P(correct) = softmax[:, 1]),
trained on whatever rows the user labels.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from tqdm import tqdm

from openk1.config import StageConfig
from openk1.data.io import read_located
from openk1.dist import runtime
from openk1.errors import OpenK1Error
from openk1.models.io import save_model
from openk1.optim import OptimConfig, check_decay, cosine_lr, guarded_step, make_optimizer, set_lr
from openk1.report.run_dir import RunDir
from openk1.rewards.reward_model import correct_probability, encode_rm_inputs, load_reward_model

Example = tuple[str, str, str, int]  # (prompt, reference answer, response, label)


class RMTrainConfig(StageConfig):
    action: Literal["train"] = "train"  # `openk1 rm train`: the one action for now
    heldout_fraction: float = Field(0.2, ge=0.0, lt=1.0)  # of the rows, for held-out accuracy (0 = none)
    epochs: int = Field(3, gt=0)
    batch_size: int = Field(32, gt=0)
    max_tokens: int = Field(512, gt=0)  # per example; over it the response keeps its end (reward_model.py)
    optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=10)  # ~1e-5 for a real model
    threshold: float = Field(0.5, ge=0.0, le=1.0)  # P(correct) >= threshold counts as "correct"
    log_every: int = Field(10, gt=0)

    @model_validator(mode="after")
    def _decay(self) -> RMTrainConfig:
        check_decay(self.optim)
        return self


def load_labelled(path: str | Path) -> list[Example]:
    """Validated (prompt, answer, response, label) rows; a bad row names file, row and field."""
    examples = []
    for where, row in read_located(path):
        for name, kinds in (
            ("prompt", (str,)),
            ("answer", (str, int, float)),
            ("response", (str,)),
        ):
            if not isinstance(row.get(name), kinds) or isinstance(row.get(name), bool):
                raise OpenK1Error(
                    f"{where}: missing field '{name}'"
                    if row.get(name) is None
                    else f"{where}: field '{name}' must be {kinds[0].__name__}"
                )
        label = row.get("label")
        if label not in (0, 1) or isinstance(label, float):
            raise OpenK1Error(f"{where}: field 'label' must be 0 or 1, got {label!r}")
        examples.append((row["prompt"], str(row["answer"]), row["response"], int(label)))
    return examples


def split(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """(train, held-out): a seeded shuffle, round(fraction * n) rows held out.

    >>> [len(part) for part in split([("q", "a", "r", 1)] * 10, 0.2, seed=0)]
    [8, 2]
    """
    if not 0.0 <= fraction < 1.0:
        raise OpenK1Error(f"heldout_fraction must be in [0, 1), got {fraction}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = round(fraction * len(examples))
    if held >= len(examples):
        raise OpenK1Error(
            f"{len(examples)} rows leave nothing to train on after the held-out split"
        )
    return [examples[i] for i in order[held:]], [examples[i] for i in order[:held]]


def columns(examples: list[Example]) -> tuple[list[str], list[str], list[str], list[int]]:
    """(prompts, answers, responses, labels) of a list of examples."""
    return (
        [e[0] for e in examples],
        [e[1] for e in examples],
        [e[2] for e in examples],
        [e[3] for e in examples],
    )


def rm_loss(
    model: Any, tokenizer: Any, chunk: list[Example], max_tokens: int
) -> tuple[torch.Tensor, float]:
    """Cross-entropy of the 2-way head on one mini-batch, and its accuracy."""
    prompts, answers, responses, labels_list = columns(chunk)
    ids, mask = encode_rm_inputs(tokenizer, prompts, answers, responses, max_tokens)  # [B, L]
    labels = torch.tensor(labels_list, device=model.device)  # [B]
    logits = model(
        input_ids=ids.to(model.device), attention_mask=mask.to(model.device)
    ).logits  # [B, 2]
    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    return loss, float((logits.argmax(-1) == labels).float().mean())


def accuracy(model: Any, tokenizer: Any, examples: list[Example], cfg: RMTrainConfig) -> float:
    """Fraction of examples where (P(correct) >= threshold) equals the label."""
    prompts, answers, responses, labels_list = columns(examples)
    probs = correct_probability(
        model, tokenizer, prompts, answers, responses, cfg.max_tokens, cfg.batch_size
    )  # [N]
    labels = torch.tensor(labels_list)  # [N]
    return float(((probs >= cfg.threshold).long() == labels).float().mean())


def train(
    model: Any,
    tokenizer: Any,
    data: list[Example],
    held: list[Example],
    cfg: RMTrainConfig,
    run_dir: RunDir,
) -> dict[str, float]:
    """Shuffled mini-batches for `epochs`; held-out accuracy after every epoch."""
    optimizer = make_optimizer(model, cfg.optim)
    per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = cfg.epochs * per_epoch
    bar = tqdm(total=total, desc="rm", unit="step", dynamic_ncols=True, mininterval=1.0)
    result: dict[str, float] = {"steps": total}
    for step in range(1, total + 1):
        epoch, index = divmod(step - 1, per_epoch)
        if index == 0:
            batches = _batches(data, cfg.batch_size, cfg.seed, epoch)
        lr = cosine_lr(step - 1, total, cfg.optim.lr, cfg.optim.lr_min, cfg.optim.warmup_steps)
        set_lr(optimizer, lr)
        model.train()
        loss, acc = rm_loss(model, tokenizer, batches[index], cfg.max_tokens)
        loss.backward()
        stats = guarded_step(model, optimizer, cfg.optim.grad_clip)
        metrics = {
            "loss": float(loss.detach()),
            "train_batch_accuracy": acc,
            "lr": lr,
            "epoch": epoch,
            **stats,
        }
        if index == per_epoch - 1 and held:
            metrics["heldout_accuracy"] = accuracy(model, tokenizer, held, cfg)
        if step % cfg.log_every == 0 or step == total or "heldout_accuracy" in metrics:
            run_dir.log(step, metrics)
        result.update({k: metrics[k] for k in ("loss", "heldout_accuracy") if k in metrics})
        bar.set_postfix(
            loss=f"{metrics['loss']:.3f}", acc=f"{result.get('heldout_accuracy', math.nan):.3f}"
        )
        bar.update()
    bar.close()
    return result


def _batches(data: list[Example], size: int, seed: int, epoch: int) -> list[list[Example]]:
    order = list(range(len(data)))
    random.Random(f"{seed}-{epoch}").shuffle(order)
    return [[data[i] for i in order[s : s + size]] for s in range(0, len(order), size)]


def run(cfg: RMTrainConfig) -> dict[str, Any]:
    if not cfg.model or not cfg.data or not cfg.out:
        raise OpenK1Error("rm train: needs --model DIR --data labelled.jsonl --out DIR")
    run_dir = runtime.run_dir(cfg)  # the run-directory contract: a new or --overwrite'd DIR
    examples = load_labelled(cfg.data)
    data, held = split(examples, cfg.heldout_fraction, cfg.seed)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_reward_model(cfg.model)
    run_dir.write_config(cfg)
    start = time.perf_counter()
    result = train(model, tokenizer, data, held, cfg, run_dir)
    save_model(model, tokenizer, run_dir.path / "model")
    positives = sum(e[3] for e in held) / len(held) if held else None
    summary: dict[str, Any] = {
        "heldout_accuracy": result.get("heldout_accuracy"),  # None without held-out rows
        "heldout_majority_baseline": None if positives is None else max(positives, 1 - positives),
        "final_loss": result.get("loss"),
        "steps": result["steps"],
        "train_rows": len(data),
        "heldout_rows": len(held),
        "wall_seconds": time.perf_counter() - start,
        "model": str(run_dir.path / "model"),
    }
    run_dir.write_summary(summary)
    run_dir.close()
    return summary
