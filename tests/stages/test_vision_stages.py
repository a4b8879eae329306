"""DPO, reward models, curate and long2short on rows with images, with the tiny VLM (docs/vision.md
"DPO, reward models, curate and long2short with images"): a DPO step's loss = the DPO formula on
log-probs from a fresh `vlm_response_logprobs`, the image is read, a bad image is a load-time
error through the CLI; a CoT judge trained and judging with images, the classic RM refusing
them; curate's pass rates on image problems (same text, other image = another problem); every
long2short method on a VLM, the merge of two VLMs a loadable VLM."""

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
from openk1.config import build
from openk1.data.images import load_image, resolve_image
from openk1.data.io import load_problems, write_jsonl
from openk1.data.synthetic_vision import VisionTaskConfig, make_vision_task
from openk1.errors import OpenK1Error
from openk1.models.io import load_model, processor_of
from openk1.models.merge import merge_checkpoints
from openk1.models.prompting import turn_end_id
from openk1.models.tiny import TinyModelConfig, char_tokenizer
from openk1.models.vision import encode, is_vision, save_vision_model, tiny_vlm, vlm_response_logprobs
from openk1.rewards.reward_model import RewardModelVerifier
from openk1.rollout.hf import HFEngine
from openk1.stages import dpo, long2short, rm
from openk1.types import Problem

SMALL = TinyModelConfig(hidden=32, layers=2, heads=2, kv_heads=2, intermediate=64)
COLORS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 160, 0)}

# The DPO step against the formula on fresh log-probs (fp32). The step scores the pairs in one
# left-padded batch of 2b rows, the features shared per image; the fresh pass scores each
# response alone from its pixels: the same ops in another summation order, <= 1e-5 per token
# (tests/rollout/test_vision_rollout.py's derivation), over <= 6 response tokens (5 characters +
# EOS): 6e-5 per sequence sum. The margin is beta x (two such differences) <= 0.5 x 2 x 6e-5, and
# the loss moves by sigmoid(-1) = 0.27 per unit of margin: 6e-5 bounds the sums, the margin and
# the loss. Measured: loss 2.4e-10 off, margin and reference sums equal.
LOGP_ATOL = 6e-5


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny VLMs of one architecture (seeds 0 and 1: long2short merges them) and three colored squares."""
    folder = tmp_path_factory.mktemp("vstages")
    for seed, name in ((0, "vlm"), (1, "vlm_b")):
        save_vision_model(*tiny_vlm(SMALL, char_tokenizer(), seed=seed), folder / name)
    (folder / "img").mkdir()
    for name, color in COLORS.items():
        Image.new("RGB", (32, 32), color).save(folder / "img" / f"{name}.png")
    return folder


PAIR_ROWS = [
    {"prompt": "What color is <image>?", "chosen": "red", "rejected": "blue!", "images": ["img/red.png"]},
    {"prompt": "Name the color.", "chosen": "blue", "rejected": "a red", "images": ["img/blue.png"]},
    {"prompt": "1+1=", "chosen": "2", "rejected": "11"},                 # a text pair in the same batch
]


def fresh_sequence_logp(model, tokenizer, prompt: str, images, response: str) -> torch.Tensor:
    """sum_t log pi(y_t | x, y_<t) of one response alone: the processor's own encoding of the
    prompt (`encode`: markers expanded, pixels), `vlm_response_logprobs` from the pixels."""
    processor = processor_of(tokenizer)
    inputs = encode(processor, prompt, [load_image(ref) for ref in images])
    ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [turn_end_id(tokenizer)]
    response_ids = torch.tensor([ids], device="cpu")
    with torch.no_grad():
        logp = vlm_response_logprobs(model, inputs["input_ids"], inputs["attention_mask"], response_ids,
                                     torch.ones_like(response_ids), pixel_values=inputs.get("pixel_values"))
    return logp.sum()


def test_dpo_step_equals_the_formula_on_fresh_vlm_logprobs(root: Path):
    write_jsonl(root / "pairs.jsonl", PAIR_ROWS)
    pairs = dpo.load_pairs(root / "pairs.jsonl")
    assert [p.prompt for p in pairs] == ["What color is <image>?", "<image>\nName the color.", "1+1="]
    assert [[ref.source for ref in p.images] for p in pairs] == [[str(root / "img/red.png")],
                                                                [str(root / "img/blue.png")], []]
    model, tokenizer = load_model(root / "vlm")
    fresh = torch.tensor([[float(fresh_sequence_logp(model, tokenizer, p.prompt, p.images, y))
                           for y in (p.chosen, p.rejected)] for p in pairs], device="cpu")   # [3, 2]
    # Reference = fresh (l_w - 1, l_l + 1): h = beta [(l_w - l_w + 1) - (l_l - l_l - 1)] = 0.5 x 2 = 1
    # for every pair, so the loss is -log sigmoid(1) = log(1 + e^-1) = 0.3132617 (module doc of algo/dpo.py).
    reference = fresh + torch.tensor([-1.0, 1.0], device="cpu")
    cfg = dpo.DPOConfig(beta=0.5, batch_size=3)
    stats = dpo.train_step(model, tokenizer, pairs, reference, cfg)
    assert stats["loss"] == pytest.approx(math.log(1 + math.exp(-1)), abs=LOGP_ATOL)
    assert stats["reward/margin"] == pytest.approx(1.0, abs=LOGP_ATOL) and stats["reward/accuracy"] == 1.0
    with torch.no_grad():   # the stage's reference pass is the same scoring as the step's
        torch.testing.assert_close(dpo.reference_logps(model, tokenizer, pairs, cfg), fresh, atol=LOGP_ATOL, rtol=0)


def test_swapping_the_image_changes_the_logprobs(root: Path):
    write_jsonl(root / "pairs.jsonl", PAIR_ROWS)
    pairs = dpo.load_pairs(root / "pairs.jsonl")[:2]
    model, tokenizer = load_model(root / "vlm")
    swapped = [replace(pairs[0], images=pairs[1].images), replace(pairs[1], images=pairs[0].images)]
    with torch.no_grad():
        chosen, rejected, _ = dpo.sequence_logps(model, tokenizer, pairs, 64)
        other_chosen, other_rejected, _ = dpo.sequence_logps(model, tokenizer, swapped, 64)
    # another image, other log-probs: far beyond the 6e-5 of rounding (measured: 0.02 to 0.25 per sequence)
    assert bool(((chosen - other_chosen).abs() > 1e-3).all() and ((rejected - other_rejected).abs() > 1e-3).all())


def test_bad_image_fails_cleanly_through_the_cli(root: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]):
    data, out = root / "bad_pairs.jsonl", root / "bad_run"
    write_jsonl(data, [PAIR_ROWS[0], {**PAIR_ROWS[1], "images": ["img/missing.png"]}])
    args = ["dpo", "--data", str(data), "--out", str(out), "--set", "max_steps=1", "epochs=0"]
    assert main([*args[:1], "--model", str(root / "vlm"), *args[1:]]) == 2
    err = capsys.readouterr().err
    assert f"{data}: line 2: images[0]: no such file ({root / 'img/missing.png'})" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()          # one line, nothing written
    write_jsonl(data, PAIR_ROWS[:1])                                        # good images, a text model
    assert main([*args[:1], "--model", str(tiny_model_dir), *args[1:]]) == 2
    assert "a prompt with images needs a vision-language model" in capsys.readouterr().err and not out.exists()


class SampledImages:
    """Records the images of every request an HFEngine samples (a spy on HFEngine.sample)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.images: list[tuple] = []
        sample = HFEngine.sample

        def spy(engine, requests):
            self.images += [r.images for r in requests]
            return sample(engine, requests)

        monkeypatch.setattr(HFEngine, "sample", spy)


def test_cot_reward_model_on_image_rows(root: Path, monkeypatch: pytest.MonkeyPatch):
    """kind=cot on a VLM: the judge's SFT rows keep the question's marker and its image, the
    judge is trained (the shared LM trainer) and judges the held-out rows with their images."""
    rows = [{"prompt": "What color is it?", "answer": name, "response": response, "label": int(response == name),
             "images": [f"img/{name}.png"]} for name in COLORS for response in ("red", "blue")]
    write_jsonl(root / "labelled.jsonl", rows)
    spy = SampledImages(monkeypatch)
    cfg = build(rm.RMTrainConfig, {"model": str(root / "vlm"), "data": str(root / "labelled.jsonl"),
                                   "out": str(root / "cot"), "kind": "cot", "heldout_fraction": 0.34, "epochs": 2,
                                   "batch_size": 4, "max_new_tokens": 6, "optim": {"lr": 0.01, "warmup_steps": 0}})
    summary = rm.run(cfg)
    assert (summary["train_rows"], summary["heldout_rows"], summary["steps"]) == (4, 2, 2)
    assert 0.0 <= summary["heldout_accuracy"] <= 1.0 and summary["dropped"] == 0
    sft_rows = [json.loads(x) for x in (root / "cot" / "cot_sft.jsonl").read_text().splitlines()]
    assert all("Question: <image>\nWhat color is it?" in r["prompt"] and len(r["images"]) == 1 for r in sft_rows)
    assert all(Path(r["images"][0]).is_absolute() for r in sft_rows)
    assert is_vision(root / "cot" / "model")
    held = [ref.source for images in spy.images for ref in images]          # the judge saw each held-out image
    assert len(spy.images) == 2 and len(held) == 2 and all(s.startswith(str(root / "img")) for s in held)


def test_classic_reward_model_refuses_images(root: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]):
    """Rows with images and a VLM as the classifier: one-line errors before anything is written;
    the `reward_model` reward term refuses problems with images; a CoT row's bad image is named."""
    rows = [{"prompt": "Color?", "answer": "red", "response": "red", "label": 1, "images": ["img/red.png"]}] * 2
    write_jsonl(root / "classic.jsonl", rows)
    base = ["rm", "train", "--data", str(root / "classic.jsonl"), "--out", str(root / "classic")]
    assert main([*base, "--model", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"openk1 rm: error: {root / 'classic.jsonl'}: line 1: a row with images; the classic reward "
                   "model reads text only (a sequence classifier on a text causal LM; transformers has none for "
                   "LLaVA): train a chain-of-thought judge on a vision-language model instead "
                   "(`openk1 rm train --set kind=cot`)")
    write_jsonl(root / "classic.jsonl", [{k: v for k, v in r.items() if k != "images"} for r in rows])
    assert main([*base, "--model", str(root / "vlm")]) == 2               # text rows, a VLM as the classifier
    err = capsys.readouterr().err.strip()
    assert f"{root / 'vlm'}: a vision-language model; the classic reward model reads text only" in err
    assert len(err.splitlines()) == 1 and not (root / "classic").exists()
    image = Problem("<image>?", "red", images=(resolve_image("img/red.png", root, "red"),))
    with pytest.raises(OpenK1Error, match="reward_model: a problem with images; the classic reward model"):
        RewardModelVerifier(tiny_model_dir).score_batch(["red"], [image])
    write_jsonl(root / "bad_cot.jsonl", [{**rows[0], "images": ["img/red.png", "img/nope.png"]}])
    with pytest.raises(OpenK1Error, match=r"bad_cot.jsonl: line 1: images\[1\]: no such file"):
        rm.load_rows(root / "bad_cot.jsonl")


def vision_task(folder: Path, train: int, heldout: int) -> dict[str, list[dict]]:
    """Synthetic image problems (data/synthetic_vision.py): every prompt is one of two texts
    ("<image>\\nWhat is the result?", "<image>\\nHow many shapes?"); the images differ."""
    return make_vision_task(VisionTaskConfig(train_images=train, heldout_problems=heldout, seed=0), folder)


def test_curate_on_image_problems_writes_pass_rates(root: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]):
    """Five problems sharing two prompt texts over five images, a sixth with the text and answer
    of the first over another image, and an exact repeat (same text, same image): only the
    repeat is a duplicate; the easy-to-hack filter and the pass rate show each problem its image
    (and cache it apart); every kept row has its pass rate; curated.jsonl reloads from DIR."""
    folder = root / "curate"
    rows = vision_task(folder, 5, 1)["train"]
    Image.new("RGB", (32, 32), (255, 255, 255)).save(folder / "images" / "blank.png")
    rows.append({**rows[0], "id": "other", "images": ["images/blank.png"]})
    write_jsonl(folder / "train.jsonl", [*rows, {**rows[0], "id": "again"}])
    spy = SampledImages(monkeypatch)
    out = folder / "run"
    assert main(["curate", "--model", str(root / "vlm"), "--data", str(folder / "train.jsonl"), "--out", str(out),
                 "--set", "hack.attempts=2", "hack.sampling.max_new_tokens=3", "difficulty.samples_per_prompt=3",
                 "difficulty.sampling.max_new_tokens=4", "difficulty.drop_trivial=false", "progress=false",
                 "prompts_per_batch=2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    removed = {k: v for k, v in summary["removed"].items() if v}
    hacked = removed.pop("easy_to_hack", 0)
    assert removed == {"duplicate": 1} and summary["input_rows"] == 7
    kept = [json.loads(x) for x in (out / "curated.jsonl").read_text().splitlines()]
    assert len(kept) == 6 - hacked and all(0.0 <= r["pass_rate"] <= 1.0 and r["difficulty"] for r in kept)
    assert summary["generation"]["difficulty"]["generated"] == len(kept) and "mean_pass_rate" in summary
    sources = {r["id"]: str(folder / r["images"][0]) for r in rows}
    # requests: 6 problems x 2 answer-only attempts, then the kept ones x 3 samples, each with its image
    assert len(spy.images) == 6 * 2 + len(kept) * 3 and all(len(images) == 1 for images in spy.images)
    assert {images[0].source for images in spy.images[:12]} == set(sources.values())
    assert [images[0].source for images in spy.images[12::3]] == [sources[r["id"]] for r in kept]
    keys = [json.loads(x)["key"] for x in (out / "cache.jsonl").read_text().splitlines()]
    assert len(set(keys)) == len(keys) == 6 + len(kept)   # "other" is cached apart from the first problem
    problems = load_problems(out / "curated.jsonl")      # absolute image paths: readable from the run dir
    assert [p.images[0].source for p in problems] == [sources[r["id"]] for r in kept]
    write_jsonl(folder / "bad.jsonl", [{**rows[1], "images": ["images/gone.png"]}])
    assert main(["curate", "--data", str(folder / "bad.jsonl"), "--out", str(folder / "bad")]) == 2
    assert f"bad.jsonl: line 1: images[0]: no such file ({folder / 'images/gone.png'})" in capsys.readouterr().err


def test_duplicates_and_contamination_need_the_same_images(root: Path):
    """Model-free curate: a prompt repeated over another image is kept, over the same image it is
    a duplicate; an eval row contaminates only a row showing its image (by digest: a copy of the
    file under another name counts)."""
    from openk1.stages.curate import CurateConfig, curate

    folder = root / "dedup"
    folder.mkdir()
    shutil.copy(root / "img" / "red.png", folder / "red_copy.png")
    prompt = "Look at the square shown in <image> and name its color in one plain English word."
    rows = [{"prompt": prompt, "answer": name, "images": [str(root / "img" / f"{name}.png")]}
            for name in ("red", "blue", "green", "red")]
    write_jsonl(folder / "eval.jsonl", [{"prompt": prompt, "answer": "x", "images": ["red_copy.png"]},
                                        {"prompt": prompt.replace(".", ", please."), "answer": "x",   # Jaccard 0.94
                                         "images": [str(root / "img" / "blue.png")]}])
    cfg = CurateConfig(dedup={"decontaminate": [str(folder / "eval.jsonl")]}, tagging={"method": "keywords"})
    kept, dropped, _ = curate(rows, cfg, where=[f"{folder / 'rows.jsonl'}: line {n}" for n in range(1, 5)])
    assert [r["answer"] for r in kept] == ["green"]
    assert [(r["answer"], r["reason"]) for r in dropped] == [("red", "contaminated"), ("blue", "contaminated"),
                                                             ("red", "contaminated")]
    assert "near duplicate" in dropped[1]["reason_detail"] and "same prompt" in dropped[0]["reason_detail"]
    kept, dropped, _ = curate(rows, CurateConfig(), where=[f"{folder / 'rows.jsonl'}: line {n}" for n in range(1, 5)])
    assert [r["answer"] for r in kept] == ["red", "blue", "green"] and dropped[0]["reason"] == "duplicate"


def test_model_tagging_shows_the_images(root: Path):
    from openk1.curate.tagging import model_domains

    model, tokenizer = load_model(root / "vlm")
    calls: list[int] = []
    handle = model.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    red = resolve_image("img/red.png", root, "red")
    domains = model_domains(model, tokenizer, ["<image> What color?", "1+1="], ["math", "general"], "{prompt}\nDomain:",
                            [(red,), ()])
    handle.remove()
    assert set(domains) <= {"math", "general"} and len(calls) == 1      # one tower call: the image prompt's


def test_merge_of_two_vlms_is_a_vlm(root: Path, tmp_path: Path):
    from safetensors.torch import load_file

    summary = merge_checkpoints([root / "vlm", root / "vlm_b"], [0.25, 0.75], tmp_path / "merged")
    model, tokenizer = load_model(summary["model"])
    assert type(model).__name__ == "LlavaForConditionalGeneration" and processor_of(tokenizer) is not None
    a, b, merged = (load_file(str(d / "model.safetensors"))
                    for d in (root / "vlm", root / "vlm_b", tmp_path / "merged"))
    for name in merged:                         # vision tower, projector and language model alike
        torch.testing.assert_close(merged[name], 0.25 * a[name] + 0.75 * b[name], atol=1e-7, rtol=1e-6)
    other = tmp_path / "other"
    shutil.copytree(root / "vlm_b", other)
    config = json.loads((other / "processor_config.json").read_text())
    config["image_processor"]["image_mean"] = [0.5, 0.5, 0.5]
    (other / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(OpenK1Error, match="image settings .* differ"):
        merge_checkpoints([root / "vlm", other], [], tmp_path / "refused")


def test_long2short_methods_on_a_vlm(root: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Every method on image problems: samples drawn with the images, SFT rows and DPO pairs
    carrying them, RL and the evaluations showing them, the merge of two VLMs; every model made
    is a VLM. The long model's random samples are replaced by fixed groups (as in
    tests/stages/test_long2short.py), so that each problem has a shortest correct answer."""
    folder = root / "l2s"
    task = vision_task(folder, 4, 2)
    write_jsonl(folder / "train.jsonl", task["train"])
    write_jsonl(folder / "heldout.jsonl", task["heldout"])
    spy = SampledImages(monkeypatch)
    draw = long2short.draw_samples

    def fixed_groups(cfg, run_dir, model_dir="", round_=1):
        before = len(spy.images)
        problems, groups = draw(cfg, run_dir, model_dir, round_)    # the long model's samples: with the images
        assert [len(g) for g in groups] == [2] * 4 and all(len(p.images) == 1 for p in problems)
        assert spy.images[before:] == [p.images for p in problems for _ in range(2)]
        return problems, [[(f"\\boxed{{{p.answer}}}", 9, True), ("\\boxed{99}", 12, False),
                           (f"so it is {p.answer}: \\boxed{{{p.answer}}}", 20, True)] for p in problems]

    monkeypatch.setattr(long2short, "draw_samples", fixed_groups)
    values = {
        "model": str(root / "vlm"), "data": str(folder / "train.jsonl"), "eval_data": str(folder / "heldout.jsonl"),
        "out": str(folder / "run"), "eval": {"samples_per_prompt": 1, "sampling": {"max_new_tokens": 4}},
        "samples": {"samples_per_prompt": 2, "sampling": {"max_new_tokens": 4}},
        "merge": {"short_model": str(root / "vlm_b")},
        "shortest_rs": {"epochs": 1, "batch_size": 2}, "dpo": {"epochs": 1, "batch_size": 4},
        "rl": {"iterations": 1, "prompts_per_iter": 2, "samples_per_prompt": 2, "sampling": {"max_new_tokens": 4}},
    }
    summary = long2short.run(build(long2short.Long2ShortConfig, values))
    run = folder / "run"
    for method in ("merge", "shortest_rs", "dpo", "rl"):
        entry = summary[f"l2s_{method}"]
        assert 0.0 <= entry["accuracy"] <= 1.0 and 0 < entry["mean_tokens"] <= 4 and is_vision(entry["model"])
    images = {str(folder / r["images"][0]) for r in task["train"]}
    for name, count in (("shortest_rs.jsonl", 4), ("dpo_pairs.jsonl", 8)):
        made = [json.loads(x) for x in (run / name).read_text().splitlines()]
        assert len(made) == count and {r["images"][0] for r in made} == images
    shown = {ref.source for row in spy.images for ref in row}
    assert shown == images | {str(folder / r["images"][0]) for r in task["heldout"]}   # sampled, trained, evaluated
    assert (run / "dpo" / dpo.REFERENCE_FILE).is_file() and len(spy.images) > 4 * 2
    text_model = build(long2short.Long2ShortConfig, values | {"model": str(tiny_model_dir), "out": str(folder / "no")})
    with pytest.raises(OpenK1Error, match="long2short: problems with images need a vision-language model"):
        long2short.run(text_model)
    assert not (folder / "no").exists()
