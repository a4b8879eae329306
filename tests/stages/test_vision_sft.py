"""SFT and pretraining rows with images on the tiny VLM (docs/vision.md "SFT and pretraining with
images"): `load_model` gives a VLM, `<image>` expanded to the processor's 16 tokens (never trained),
image tokens kept whole by the over-long rule, a packed batch with images = each example alone,
`openk1 sft` end to end (the loss falls, the model reads the images, the saved model reloads as a
VLM), text-only rows mixed in, and an exact resume."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from openk1.cli import main
from openk1.data.images import ImageRef
from openk1.data.io import load_problems, write_jsonl
from openk1.data.packing import Example, collate, encode_row, fit_length, pack, with_images
from openk1.data.sources import DataSource, read_sft_rows
from openk1.errors import OpenK1Error
from openk1.models.io import load_model, processor_of
from openk1.trainer import batch_nll

TOKENS = 16    # image tokens of the tiny LLaVA: (32 px / patch 8)^2, CLS dropped
COLORS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 160, 0)}
SIZE = ["hidden=32", "layers=2", "heads=2", "kv_heads=2", "intermediate=64"]
CPU = torch.device("cpu")

# A packed row's NLL against the sum of its examples' NLLs alone (fp32): the block-causal mask
# gives each token the same inputs, so the two differ only in the summation order of attention
# over a longer key axis. Per token, as tests/models/test_vision.py derives for log-probs of the
# same model (hidden 32, <= ~60 attended positions, 16 of them image tokens, logsumexp over 102):
# sqrt(300 ops) x eps 1.2e-7 x |logp| ~5 ~ 1e-5; the sums add at most one such error per
# trained token. Measured: 3.8e-6 over 17 tokens (tolerance 1.7e-4).
LOGP_ATOL = 1e-5


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny VLM (`openk1 init-model --set vision=true`), three colored squares and SFT rows:
    "What color is <image>?" -> the color, a chat row with an image content part, a text row."""
    root = tmp_path_factory.mktemp("vsft")
    assert main(["init-model", "--out", str(root / "m0"), "--set", "vision=true", *SIZE]) == 0
    for name, color in COLORS.items():
        Image.new("RGB", (8, 8), color).save(root / f"{name}.png")
    rows: list[dict[str, object]] = [{"prompt": "What color is <image>?", "response": name, "images": [f"{name}.png"]}
                                     for name in COLORS]
    rows.append({"messages": [{"role": "user", "content": [{"type": "image", "path": "red.png"},
                                                           {"type": "text", "text": "Name it."}]},
                              {"role": "assistant", "content": "red"}]})
    rows.append({"prompt": "2+2=", "response": "4"})          # text only, in the same runs
    write_jsonl(root / "sft.jsonl", rows)
    return root


def encoded(folder: Path, tokenizer: object) -> list[Example]:
    where = f"{folder / 'sft.jsonl'}: line 1"
    return [encode_row(with_images(json.loads(line), where), tokenizer)
            for line in (folder / "sft.jsonl").read_text().splitlines()]


def test_load_model_gives_a_vlm_and_expands_images(folder: Path):
    model, tokenizer = load_model(folder / "m0")
    processor = processor_of(tokenizer)
    assert type(model).__name__ == "LlavaForConditionalGeneration" and processor.tokenizer is tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    examples = encoded(folder, tokenizer)
    for e in examples[:4]:
        ((start, end),) = e.spans
        assert end - start == TOKENS and e.ids[start:end] == [image_id] * TOKENS and len(e.images) == 1
        assert e.ids.count(image_id) == TOKENS and not any(e.action_mask[start:end])
    assert examples[0].images[0].source == str(folder / "red.png") == examples[3].images[0].source
    assert examples[4].images == () and examples[4].spans == () and image_id not in examples[4].ids
    assert sum(examples[3].action_mask) == len("red") + 1            # the assistant turn + EOS
    # the text model's path is unchanged: a row with images is refused there
    text = {"text": "a <image> b", "images": ["red.png"]}
    row = with_images(text, f"{folder / 'sft.jsonl'}: line 9")
    e = encode_row(row, tokenizer)                                    # pretraining text with an image
    assert e.spans == ((3, 3 + TOKENS),) and e.action_mask == [0, 1, 1] + [0] * TOKENS + [1] * 3   # BOS "a "; " b" EOS
    with pytest.raises(OpenK1Error, match=r"1 <image> token for 0 images"):
        encode_row({"prompt": "p", "response": "a <image>"}, tokenizer)


def test_text_model_refuses_images(folder: Path, tiny):
    _, tokenizer = tiny
    row = with_images({"prompt": "p", "response": "r", "images": ["red.png"]}, f"{folder / 'x.jsonl'}: line 1")
    assert row["prompt"] == "<image>\np" and isinstance(row["images"][0], ImageRef)
    with pytest.raises(OpenK1Error, match="the row has images, but the model is a text model"):
        encode_row(row, tokenizer)


def test_messages_preset_reads_image_parts(folder: Path):
    path = folder / "chat.jsonl"
    chat = [{"role": "user", "content": [{"type": "text", "text": "Is it \\boxed{}? "},
                                         {"type": "image", "image": "blue.png"}]},
            {"role": "assistant", "content": "It is \\boxed{blue}."}]
    write_jsonl(path, [{"messages": chat}])
    source = DataSource(path=str(path), preset="messages")
    (row,) = read_sft_rows(source)
    assert row["messages"][0]["content"][1] == {"type": "image"}
    assert [ref.source for ref in row["images"]] == [str(folder / "blue.png")]
    (problem,) = load_problems(source)
    assert problem.prompt == "Is it \\boxed{}? <image>" and problem.answer == "blue"
    assert [ref.source for ref in problem.images] == [str(folder / "blue.png")]


def test_overlong_rule_never_cuts_an_image():
    red, blue = ImageRef("/r.png", "r"), ImageRef("/b.png", "b")
    e = Example(list(range(12)), [0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1], images=(red, blue), spans=((2, 5), (7, 10)))
    (cut,), status = fit_length(e, 8, "truncate")           # 8 falls in the second image: cut at 7
    assert status == "truncated" and cut.ids == list(range(7)) and cut.images == (red,) and cut.spans == ((2, 5),)
    chunks, status = fit_length(e, 6, "split")              # cuts at 6 (after image 1), then 12
    assert status == "split" and [c.ids for c in chunks] == [list(range(6)), list(range(6, 12))]
    assert [c.images for c in chunks] == [(red,), (blue,)] and chunks[1].spans == ((1, 4),)
    assert chunks[1].action_mask[0] == 0
    assert fit_length(e, 2, "truncate") == ([], "dropped")  # an image longer than max_len
    rows = pack([e, Example([1, 2], [0, 1])], 14)
    assert [[len(x.ids) for x in row] for row in rows] == [[12, 2]]   # whole examples only


def test_packed_batch_with_images_equals_each_alone(folder: Path):
    model, tokenizer = load_model(folder / "m0")
    processor, pad = processor_of(tokenizer), tokenizer.pad_token_id
    examples = encoded(folder, tokenizer)
    batch = collate([examples[:3], examples[3:]], pad, processor)
    assert batch["pixel_values"].shape == (4, 3, 32, 32)      # red, blue, green | red (chat row)
    torch.testing.assert_close(batch["pixel_values"][0], batch["pixel_values"][3], atol=0, rtol=0)
    with torch.no_grad():
        packed, n = batch_nll(model, [examples[:3], examples[3:]], pad, CPU, processor)
        alone = [batch_nll(model, [[e]], pad, CPU, processor) for e in examples]
        swapped = replace(examples[0], images=examples[1].images)
        other, _ = batch_nll(model, [[swapped]], pad, CPU, processor)
    assert n == sum(k for _, k in alone) == sum(sum(e.action_mask[1:]) for e in examples)
    assert abs(float(packed) - sum(float(v) for v, _ in alone)) <= n * LOGP_ATOL
    assert abs(float(other) - float(alone[0][0])) > 1e-3      # the image is read: another image, another NLL


def metrics(run: Path) -> list[dict[str, float]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def sft(folder: Path, out: Path, *extra: str) -> int:
    """`openk1 sft` on the rows: packed rows of 128 tokens (image and text rows together)."""
    return main(["sft", "--model", str(folder / "m0"), "--data", str(folder / "sft.jsonl"), "--out", str(out),
                 "--set", "batch_size=4", "max_seq_len=128", "optim.lr=0.01", "optim.lr_min=0.001",
                 "optim.warmup_steps=5", "log_every=1", f"eval_loss_data={folder / 'sft.jsonl'}", *extra])


def test_sft_end_to_end_learns_the_colors(folder: Path):
    from openk1.models.vision import vlm_generate

    assert sft(folder, folder / "run", "epochs=400") == 0                     # 200 steps, ~6 s
    losses = [r["loss"] for r in metrics(folder / "run")]
    # Blind to the images, the first letter of "red"/"blue"/"green" costs ln 3 each: 3 ln 3 over
    # the 21 trained tokens of a pass (4 + 5 + 6 + chat 4 + text 2) is a mean of 0.157 at best.
    # Measured: 4.63 at step 1 -> 3e-4 at step 200.
    assert losses[0] > 4 and losses[-1] < 0.1 * 3 * math.log(3) / 21
    model, tokenizer = load_model(folder / "run")
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert (folder / "run" / "model" / "processor_config.json").is_file()
    for name, color in COLORS.items():
        gen = vlm_generate(model.eval(), processor_of(tokenizer), "What color is <image>?",
                           [Image.new("RGB", (8, 8), color)], max_new_tokens=8, seed=0, temperature=0.0)
        assert tokenizer.decode(gen.tokens[0], skip_special_tokens=True) == name


def test_resume_of_an_image_run_is_exact(folder: Path):
    run = folder / "resumed"
    assert sft(folder, run, "epochs=30", "checkpoint_every=6", "keep_checkpoints=0") == 0
    full = dict(load_model(run / "model")[0].named_parameters())
    logged = (run / "metrics.jsonl").read_text()
    first, *later = sorted((run / "checkpoints").glob("step_*"))
    assert first.name == "step_000006" and later                                   # "crash" after step 6
    for path in [*later, run / "model"]:
        shutil.rmtree(path)
    assert main(["sft", "--config", str(run / "config.yaml"), "--resume"]) == 0   # from step 6
    resumed = dict(load_model(run / "model")[0].named_parameters())
    assert resumed.keys() == full.keys()
    for name, value in full.items():
        assert torch.equal(resumed[name], value), name
    assert (run / "metrics.jsonl").read_text() == logged
