"""`openk1 rm train`: train a reward model (report §2.3.5) on labelled rows, `kind` classic or cot.

Rows: `prompt`, `answer` (the reference), `response`, `label` (1 = the response is correct,
0 = it is not), optional `reasoning` (a string: the worked check a CoT judge learns to write;
null = none). A seeded `heldout_fraction` of the rows is held out, the same rows for both kinds.

classic (default; rewards/reward_model.py): a sequence classifier built on any causal-LM
directory, trained with cross-entropy, AdamW, warm-up + cosine LR by the loop below. Held-out
accuracy is logged after every epoch (metrics.jsonl); DIR/model is the classifier, ready for
`RewardModelVerifier` (the `reward_model` reward term).

cot (rewards/cot_verifier.py): the causal LM itself becomes the judge. Each row is an SFT
example: prompt = the judge's prompt exactly as `CoTVerifier` renders it (`render_prompt`),
target = reasoning + "\n" (when the row has one) + `{"correct": true|false}` + EOS. It trains
with the shared LM trainer (trainer.py `train_lm`, the `openk1 sft` code path: loss on target
tokens only), logged in DIR/sft/ (config, metrics, checkpoint); one unpacked stage with the
same epochs, batch size and AdamW warm-up + cosine LR settings; an example longer than
`max_tokens` is dropped (counted). Held-out accuracy = `CoTVerifier` on DIR/model, greedy,
verdict vs label; a malformed verdict counts as wrong (`heldout_malformed`). DIR/model is a
causal LM directory for the `cot_verifier` reward term.

Rows with images (docs/vision.md "DPO, reward models, curate and long2short with images"):
`images` on a row are the question's (paths relative to the data file's folder, or data URIs;
read when the rows load, a bad one naming the file, line and image; no `<image>` marker in the
prompt = the images in front of it). kind cot trains a vision-language judge on them: the judge's
prompt holds the question's markers, its SFT row the images, and the held-out judging shows them
(`CoTVerifier.score_batch`). kind classic refuses them: its model is a text sequence classifier
(`AutoModelForSequenceClassification` has no LLaVA class), and so is a VLM refused as its model.

Departures from the report (§2.3.5): its classic RM is a value head on a large model; here it
is transformers' 2-way classification head on the last real token (P(correct) =
softmax[:, 1]). Its CoT RM's training data is not described; here it is whatever rows (and
worked checks) the user labels, e.g. data/judge_task.py.
"""

from __future__ import annotations

import json
import math
import random
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from pydantic import Field, model_validator

from openk1.checkpoint import check_resume_step, latest_checkpoint
from openk1.config import StageConfig
from openk1.data.images import ImageRef, image_field
from openk1.data.io import read_located, write_jsonl
from openk1.data.packing import encode_row, with_images
from openk1.distributed import fsdp, runtime
from openk1.errors import OpenK1Error
from openk1.frame import StageRun
from openk1.loop import Loop, accumulate_micro
from openk1.models.io import load_model, model_dir
from openk1.models.vlm import require_processor
from openk1.optim import OptimConfig, check_decay, cosine_lr
from openk1.report.run_dir import RunDir
from openk1.rewards.cot_verifier import COT_TEMPLATE, CoTVerifier, render_prompt
from openk1.rewards.reward_model import TEXT_ONLY, correct_probability, encode_rm_inputs, load_reward_model
from openk1.schedules import LRSchedule, Stage
from openk1.stages.sft import SFTConfig
from openk1.trainer import train_lm
from openk1.types import Problem

Example = tuple[str, str, str, int]  # (prompt, reference answer, response, label)
Images = tuple[ImageRef, ...]


class Labelled(tuple[str, str, str, int, str]):
    """A labelled row: (prompt, answer, response, label, reasoning) ("" = no reasoning), which it
    unpacks, slices and compares as, and `images`, the question's (() for a text row; a row with
    images equals only a row with the same images)."""

    images: Images

    def __new__(cls, prompt: str, answer: str, response: str, label: int, reasoning: str = "",
                images: Images = ()) -> Labelled:
        row = super().__new__(cls, (prompt, answer, response, label, reasoning))
        row.images = images
        return row

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, tuple) and tuple(self) == tuple(other)
                and self.images == images_of(other))

    def __hash__(self) -> int:
        return hash((tuple(self), self.images)) if self.images else hash(tuple(self))


def images_of(row: tuple[Any, ...]) -> Images:
    """A row's images: a `Labelled`'s, () for a plain tuple."""
    return getattr(row, "images", ())


R = TypeVar("R", Example, Labelled)


class RMTrainConfig(StageConfig):
    action: Literal["train"] = Field("train", description="`openk1 rm train`: the one action for now")
    kind: Literal["classic", "cot"] = Field(
        "classic", description="classic: a classification head; cot: a generative chain-of-thought judge")
    heldout_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="share of the rows held out for accuracy (0 = none)")
    epochs: int = Field(3, gt=0, description="passes over the training rows")
    batch_size: int = Field(32, gt=0, description="rows per optimizer step")
    micro_batch_size: int = Field(0, ge=0, description="classic: rows per forward/backward pass, gradients "
                                  "accumulated (0 = the whole step's rows; under torchrun: each rank's share)")
    max_tokens: int = Field(512, gt=0, description="tokens per example; over it classic keeps the "
                            "response's end, cot drops the example")
    optim: OptimConfig = Field(
        OptimConfig(lr=1e-5, lr_min=1e-6, warmup_steps=10),
        description="AdamW and the cosine schedule; defaults for a pretrained checkpoint (the tiny "
                    "init-model recommends lr 1e-3)")
    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description='classic: P(correct) >= threshold counts as "correct"')
    max_new_tokens: int = Field(256, gt=0, description="cot: the judge's generation budget on held-out rows")
    template: str = Field(COT_TEMPLATE, description="cot: the judge's prompt; another one must be given to "
                          "the cot_verifier reward term too (summary.json verifier_options)")
    log_every: int = Field(10, gt=0, description="steps between metrics rows")
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints (0 = only at the end)")
    keep_checkpoints: int = Field(2, ge=0, description="newest checkpoints kept (0 = all)")

    @model_validator(mode="after")
    def _decay(self) -> RMTrainConfig:
        check_decay(self.optim)
        try:
            self.template.format(prompt="", answer="", response="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"template: only {{prompt}}, {{answer}} and {{response}} are filled in ({exc!r})"
            ) from None
        return self


def load_labelled(path: str | Path) -> list[Example]:
    """Validated (prompt, answer, response, label) rows; a bad row names file, row and field."""
    return [row[:4] for row in load_rows(path, images=False)]


def load_rows(path: str | Path, images: bool = True) -> list[Labelled]:
    """Validated (prompt, answer, response, label, reasoning) rows (reasoning "" when absent) and
    their images (read and decoded: a bad image names file, row and image); `images=False`
    (classic): a row with images is an error naming the file and row."""
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
        reasoning = row.get("reasoning")
        if reasoning is not None and not isinstance(reasoning, str):
            raise OpenK1Error(f"{where}: field 'reasoning' must be str, got {reasoning!r}")
        if row.get("images") is not None and not images:
            raise OpenK1Error(f"{where}: a row with images; {TEXT_ONLY}")
        read = with_images(row, where) if row.get("images") is not None else row   # markers placed
        examples.append(Labelled(read["prompt"], str(row["answer"]), row["response"], int(label), reasoning or "",
                                 tuple(read.get("images") or ())))
    return examples


def split(examples: list[R], fraction: float, seed: int) -> tuple[list[R], list[R]]:
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
    model: Any, tokenizer: Any, chunk: list[Example], max_tokens: int, normaliser: int = 0
) -> tuple[torch.Tensor, float]:
    """Cross-entropy of the 2-way head summed over `chunk` / `normaliser` (default: its size,
    the mean), and the fraction of `chunk` it classifies right, over the same normaliser."""
    prompts, answers, responses, labels_list = columns(chunk)
    device = next(model.parameters()).device
    ids, mask = encode_rm_inputs(tokenizer, prompts, answers, responses, max_tokens)  # [B, L]
    labels = torch.tensor(labels_list, device=device)  # [B]
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # [B, 2]
    n = normaliser or len(chunk)
    loss = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum") / n
    return loss, float((logits.argmax(-1) == labels).sum()) / n


def accuracy(model: Any, tokenizer: Any, examples: list[Example], cfg: RMTrainConfig) -> float:
    """Fraction of examples where (P(correct) >= threshold) equals the label."""
    prompts, answers, responses, labels_list = columns(examples)
    probs = correct_probability(
        model, tokenizer, prompts, answers, responses, cfg.max_tokens, cfg.batch_size
    )  # [N]
    labels = torch.tensor(labels_list, device="cpu")  # [N]
    return float(((probs >= cfg.threshold).long() == labels).float().mean())


def train(
    model: Any,
    tokenizer: Any,
    data: list[Example],
    held: list[Example],
    cfg: RMTrainConfig,
    run_dir: RunDir,
) -> dict[str, float]:
    """Shuffled mini-batches for `epochs` on the shared step loop (loop.py); held-out accuracy
    after every epoch (that step is always logged). Under torchrun each rank takes its share of
    a step's rows (an FSDP2 copy trains; `model` gets its weights before each evaluation)."""
    loop = Loop.for_model(model, tokenizer, cfg.optim, run_dir, log_every=cfg.log_every,
                          device=runtime.resolve_device(cfg.device), checkpoint_every=cfg.checkpoint_every,
                          keep_checkpoints=cfg.keep_checkpoints)
    first = loop.resume()["step"] if cfg.resume else 0   # the checkpoint's weights: train_classic
    per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = classic_steps(cfg, len(data))
    result: dict[str, float] = {"steps": total}
    batches: list[list[Example]] = []

    def step(s: int) -> dict[str, Any]:   # s: 0-based
        epoch, index = divmod(s, per_epoch)
        if index == 0 or not batches:   # an epoch's order; resumed mid-epoch: the same order
            batches[:] = _batches(data, cfg.batch_size, cfg.seed, epoch)
        batch = batches[index]

        def micro(rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            loss, acc = rm_loss(loop.trainee, tokenizer, [batch[i] for i in rows.tolist()], cfg.max_tokens,
                                normaliser=len(batch))
            return loss, {"loss": float(loss.detach()), "train_batch_accuracy": acc}

        return {**accumulate_micro(len(batch), cfg.micro_batch_size or len(batch), micro), "epoch": epoch}

    def after(s: int, metrics: dict[str, Any]) -> bool:
        if s % per_epoch == per_epoch - 1 and held:
            fsdp.sync_weights(loop.trainee, model)   # a collective under torchrun; no-op in one process
            if runtime.is_main():
                metrics["heldout_accuracy"] = accuracy(model, tokenizer, held, cfg)
        result.update({k: metrics[k] for k in ("loss", "heldout_accuracy") if k in metrics})
        return "heldout_accuracy" in metrics

    lr_at = partial(cosine_lr, total=total, lr_max=cfg.optim.lr, lr_min=cfg.optim.lr_min,
                    warmup=cfg.optim.warmup_steps)
    loop.run(first, total, lr_at, step, after=after, desc="rm",
             postfix=lambda m: {"loss": f"{m['loss']:.3f}", "acc": f"{result.get('heldout_accuracy', math.nan):.3f}"})
    return result


def classic_steps(cfg: RMTrainConfig, rows: int) -> int:
    """Optimizer steps of a classic run: epochs x ceil(rows / batch_size)."""
    return cfg.epochs * math.ceil(rows / cfg.batch_size)


def _batches(data: list[Example], size: int, seed: int, epoch: int) -> list[list[Example]]:
    order = list(range(len(data)))
    random.Random(f"{seed}-{epoch}").shuffle(order)
    return [[data[i] for i in order[s : s + size]] for s in range(0, len(order), size)]


def train_classic(data: list[Labelled], held: list[Labelled], cfg: RMTrainConfig, frame: StageRun) -> dict[str, Any]:
    """The classifier: `train` above (from the newest checkpoint on --resume), then DIR/model."""
    path = model_dir(cfg.model)   # a run directory's model/ too
    if cfg.resume:
        checkpoint = latest_checkpoint(frame.path)
        check_resume_step(checkpoint, classic_steps(cfg, len(data)), "steps")
        path = checkpoint / "model"
    model, tokenizer = load_reward_model(path)
    frame.begin()
    result = train(model, tokenizer, [r[:4] for r in data], [r[:4] for r in held], cfg, frame.dir)
    frame.save_model(model, tokenizer)
    return result


def cot_target(label: int, reasoning: str) -> str:
    """What the CoT judge learns to write after its prompt (EOS is added by `encode_row`).

    >>> print(cot_target(1, "3*4+1 = 13; reference 13; equal"))
    3*4+1 = 13; reference 13; equal
    {"correct": true}
    >>> cot_target(0, "")
    '{"correct": false}'
    """
    verdict = json.dumps({"correct": bool(label)})
    return f"{reasoning}\n{verdict}" if reasoning else verdict


def cot_row(row: Labelled, tokenizer: Any, template: str = COT_TEMPLATE) -> dict[str, Any]:
    """A labelled row as an SFT row: the judge's prompt, rendered as `CoTVerifier` renders it
    (chat template, response cut to its default `max_response_chars`) -> target; a row with
    images adds them (absolute paths or data URIs), their markers inside the question."""
    prompt, answer, response, label, reasoning = row
    images = images_of(row)
    return {
        "prompt": render_prompt(tokenizer, prompt, answer, response, template=template),
        "response": cot_target(label, reasoning),
        **image_field(images),
    }


def cot_sft_config(cfg: RMTrainConfig, data: Path, out: Path) -> SFTConfig:
    """The shared LM trainer's settings: one unpacked stage, this run's epochs, batch, LR,
    checkpoints and --resume."""
    lr = LRSchedule(
        lr_max=cfg.optim.lr, lr_min=cfg.optim.lr_min, warmup_steps=cfg.optim.warmup_steps
    )
    stage = Stage.model_validate(
        {"name": "cot_rm", "max_seq_len": cfg.max_tokens, "pack": False, "epochs": cfg.epochs,
         "lr": lr}
    )
    return SFTConfig.model_validate(
        {"model": cfg.model, "data": str(data), "out": str(out), "seed": cfg.seed,
         "stages": [stage], "batch_size": cfg.batch_size, "max_response_tokens": cfg.max_tokens,
         "overlong": "drop", "optim": cfg.optim, "log_every": cfg.log_every,
         "checkpoint_every": cfg.checkpoint_every, "keep_checkpoints": cfg.keep_checkpoints,
         "resume": cfg.resume}
    )


def cot_accuracy(judge: CoTVerifier, held: list[Labelled]) -> tuple[float, int]:
    """(fraction of rows whose verdict matches the label, malformed verdicts): greedy judging;
    a malformed verdict matches neither label."""
    scores = judge.score_batch(
        [r[2] for r in held], [Problem(r[0], r[1], "freeform", images=images_of(r)) for r in held]
    )
    hits = [s.verdict == ("cot_correct" if r[3] else "cot_wrong") for s, r in zip(scores, held)]
    return sum(hits) / len(held), sum(s.verdict == "cot_malformed" for s in scores)


def train_cot(data: list[Labelled], held: list[Labelled], cfg: RMTrainConfig, frame: StageRun) -> dict[str, Any]:
    """The generative judge: SFT rows in DIR/cot_sft.jsonl, `train_lm` (checkpoints and exact
    --resume in DIR/sft), DIR/model, then held-out judging by `CoTVerifier` from DIR/model."""
    rows_path = frame.path / "cot_sft.jsonl"
    sft_cfg = cot_sft_config(cfg, rows_path, frame.path / "sft")
    model, tokenizer = load_model(str(latest_checkpoint(Path(sft_cfg.out)) / "model") if cfg.resume else cfg.model,
                                  prompts=cfg)
    if any(images_of(r) for r in data + held):
        check_images(tokenizer, cfg.template)
    frame.begin()   # with --overwrite: the old run is gone before DIR/sft opens
    if not cfg.resume:
        write_jsonl(rows_path, [cot_row(r, tokenizer, cfg.template) for r in data])
    with StageRun(sft_cfg) as sft_run:
        sft_run.begin()
        encode = partial(encode_row, tokenizer=tokenizer, max_response_tokens=cfg.max_tokens)
        trained = sft_run.finish(train_lm(model, tokenizer, sft_cfg, list(sft_cfg.stages), encode, sft_run.dir))
    frame.save_model(model, tokenizer)
    result = {"loss": trained["final_loss"], "steps": trained["steps"], "heldout_malformed": None}
    result["dropped"] = trained.get("dropped", 0)  # examples over max_tokens
    result["verifier_options"] = verifier_options(cfg)
    if held:
        judge = CoTVerifier(
            frame.path / "model",
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            template=cfg.template,
        )
        accuracy, malformed = cot_accuracy(judge, held)
        result.update(heldout_accuracy=accuracy, heldout_malformed=malformed)
        frame.dir.log(trained["steps"], {"heldout_accuracy": accuracy, "heldout_malformed": malformed})
    return result


def check_images(tokenizer: Any, template: str) -> None:
    """Rows with images need a vision-language judge, and a template that shows the question
    (its `<image>` markers), before anything is written."""
    require_processor(tokenizer)
    if "{prompt}" not in template:
        raise OpenK1Error("rm train: rows with images need {prompt} in the template (the question's "
                          "<image> markers go there)")


TRAINERS = {"classic": train_classic, "cot": train_cot}
COT_FIGURES = ("heldout_malformed", "dropped", "verifier_options")  # in summary.json (cot only)


def verifier_options(cfg: RMTrainConfig) -> dict[str, str]:
    """The `options` a `cot_verifier` reward term needs to judge as the model was trained."""
    return {} if cfg.template == COT_TEMPLATE else {"template": cfg.template}


def run(cfg: RMTrainConfig) -> dict[str, Any]:
    if not cfg.model or not cfg.data or not cfg.out:
        raise OpenK1Error("rm train: needs --model DIR --data labelled.jsonl --out DIR")
    with StageRun(cfg) as frame:   # the run-directory contract: a new, --overwrite'd or --resume'd DIR
        rows = load_rows(cfg.data.plain_path("rm train"), images=cfg.kind == "cot")
        data, held = split(rows, cfg.heldout_fraction, cfg.seed)
        torch.manual_seed(cfg.seed)
        result = TRAINERS[cfg.kind](data, held, cfg, frame)
        positives = sum(e[3] for e in held) / len(held) if held else None
        return frame.finish({
            "kind": cfg.kind,
            "heldout_accuracy": result.get("heldout_accuracy"),  # None without held-out rows
            "heldout_majority_baseline": None if positives is None else max(positives, 1 - positives),
            **{k: result[k] for k in COT_FIGURES if k in result},
            "final_loss": result.get("loss"),
            "steps": result["steps"],
            "train_rows": len(data),
            "heldout_rows": len(held),
            "model": str(frame.path / "model"),
        })
