"""Classic reward model: input encoding, `openk1 rm train` on a synthetic labelled set (held-out
accuracy well above chance), and the verifier built on the trained model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from transformers import AutoConfig

from openk1.cli import main
from openk1.data.io import write_jsonl
from openk1.errors import OpenK1Error
from openk1.models.tiny import char_tokenizer
from openk1.report.run_dir import read_metrics
from openk1.rewards import reward_model
from openk1.rewards.reward_model import RM_TEMPLATE, RewardModelVerifier, encode_rm_inputs
from openk1.stages import rm
from openk1.types import Problem


def arithmetic_rows(n: int, seed: int = 0) -> list[dict]:
    """a+b with a, b in 1..9; half the responses give the sum, half another number in 2..18."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        right = i % 2 == 0
        said = a + b if right else rng.choice([x for x in range(2, 19) if x != a + b])
        rows.append(
            {
                "prompt": f"{a}+{b}=?",
                "answer": str(a + b),
                "response": f"The answer is {said}.",
                "label": int(right),
            }
        )
    return rows


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> tuple[Path, Path, dict]:
    """`openk1 rm train` on 3000 rows (600 held out) of the tiny model: ~10 s on one core."""
    root = tmp_path_factory.mktemp("rm")
    data, out = root / "labelled.jsonl", root / "run"
    write_jsonl(data, arithmetic_rows(3000))
    code = main(
        [
            "rm",
            "train",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(data),
            "--out",
            str(out),
            "--set",
            "epochs=3",
            "batch_size=32",
            "max_tokens=128",
            "optim.lr=3e-3",
        ]
    )
    assert code == 0
    return data, out, json.loads((out / "summary.json").read_text())


def test_rm_train_beats_chance_on_held_out_rows(trained: tuple[Path, Path, dict]) -> None:
    _, out, summary = trained
    assert summary["heldout_rows"] == 600 and summary["train_rows"] == 2400
    assert abs(summary["heldout_majority_baseline"] - 0.5) < 0.05  # balanced: chance is ~0.5
    assert summary["heldout_accuracy"] >= 0.75
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert AutoConfig.from_pretrained(out / "model").num_labels == 2
    per_epoch = [r for r in read_metrics(out / "metrics.jsonl") if "heldout_accuracy" in r]
    assert [r["epoch"] for r in per_epoch] == [0, 1, 2]
    assert per_epoch[-1]["heldout_accuracy"] == summary["heldout_accuracy"]


def test_verifier_on_trained_model_agrees_with_training_eval(
    trained: tuple[Path, Path, dict],
) -> None:
    data, out, summary = trained
    _, held = rm.split(rm.load_labelled(data), 0.2, seed=0)
    verifier = RewardModelVerifier(out / "model")
    problems = [Problem(p, a, "freeform") for p, a, _, _ in held]
    scores = verifier.score_batch([r for _, _, r, _ in held], problems)
    hits = [(s.verdict == "rm_correct") == bool(label) for s, (*_, label) in zip(scores, held)]
    assert abs(sum(hits) / len(held) - summary["heldout_accuracy"]) <= 1 / len(held)
    for s in scores:
        assert s.reward == float(s.details["probability"] >= 0.5)
        assert s.verdict == ("rm_correct" if s.reward == 1.0 else "rm_wrong")


def test_verifier_threshold_soft_reward_and_single_load(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = []
    real = reward_model.load_reward_model
    monkeypatch.setattr(reward_model, "load_reward_model", lambda p: loads.append(p) or real(p))
    problem = Problem("1+1=?", "2", "freeform")
    soft = RewardModelVerifier(tiny_model_dir, soft=True)
    first, second = soft("2", problem), soft("3", problem)
    assert len(loads) == 1  # loaded once, then cached
    assert first.reward == first.details["probability"] and 0.0 < first.reward < 1.0
    assert second.details["probability"] != first.details["probability"]
    assert RewardModelVerifier(tiny_model_dir, threshold=0.0)("2", problem).verdict == "rm_correct"
    never = RewardModelVerifier(tiny_model_dir, threshold=1.01)("2", problem)
    assert (never.reward, never.verdict) == (0.0, "rm_wrong")


def test_encoding_keeps_reference_and_end_of_response() -> None:
    tok = char_tokenizer()
    ids, mask = encode_rm_inputs(tok, ["Q" * 50, "1+1"], ["42", "2"], ["x" * 100 + "END", "2"], 80)
    long_text = tok.decode(ids[0], skip_special_tokens=True)
    assert ids.shape == (2, 80) and mask[0].sum() == 80
    # room = 80 - 31 (reference line) - 26 (last line) = 23 tokens: the response keeps its last
    # max(23 // 2, 23 - 61) = 11 characters, the question its first 12 tokens (<bos> + 11 chars)
    assert (
        long_text
        == "Question: Q\nReference answer: 42\nResponse: xxxxxxxxEND\nIs the response correct?"
    )
    short = RM_TEMPLATE.format(prompt="1+1", answer="2", response="2")
    assert tok.decode(ids[1][mask[1].bool()], skip_special_tokens=True) == short
    assert mask[1].tolist() == [1] * (len(short) + 1) + [0] * (80 - len(short) - 1)  # +1: <bos>


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {"prompt": "q", "answer": "1", "response": "1", "label": 2},
            "line 2: field 'label' must be 0 or 1",
        ),
        ({"prompt": "q", "answer": "1", "label": 1}, "line 2: missing field 'response'"),
        (
            {"prompt": 3, "answer": "1", "response": "1", "label": 1},
            "line 2: field 'prompt' must be str",
        ),
    ],
)
def test_bad_labelled_row_names_file_row_field(tmp_path: Path, row: dict, message: str) -> None:
    path = tmp_path / "l.jsonl"
    write_jsonl(path, [{"prompt": "q", "answer": 1, "response": "1", "label": 0}, row])
    with pytest.raises(OpenK1Error, match=f"{path}: {message}"):
        rm.load_labelled(path)


def test_split_is_seeded_and_disjoint() -> None:
    rows = [(str(i), "a", "r", i % 2) for i in range(10)]
    train, held = rm.split(rows, 0.3, seed=1)
    assert (len(train), len(held)) == (7, 3) and rm.split(rows, 0.3, seed=1) == (train, held)
    assert sorted(train + held) == sorted(rows)
    with pytest.raises(OpenK1Error, match="nothing to train"):
        rm.split(rows[:1], 0.9, seed=0)


def test_rm_resume_is_exact(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A killed classic run resumed from its checkpoint ends with the uninterrupted run's weights
    and metrics (same batch order mid-epoch, Adam's state restored)."""
    import shutil

    import torch

    data, out = tmp_path / "labelled.jsonl", tmp_path / "run"
    write_jsonl(data, arithmetic_rows(96))
    args = ["rm", "train", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
            "--set", "epochs=2", "batch_size=16", "max_tokens=64", "optim.lr=3e-3", "log_every=1",
            "checkpoint_every=3", "keep_checkpoints=0", "heldout_fraction=0.25"]
    assert main(args) == 0   # 72 training rows: 5 steps per epoch, 10 in all; checkpoints 3, 6, 9, 10
    full = dict(reward_model.load_reward_model(out / "model")[0].named_parameters())
    metrics = (out / "metrics.jsonl").read_text()
    for step in ("step_000010", "step_000009"):   # killed after step 7: the newest left is step 6
        shutil.rmtree(out / "checkpoints" / step, ignore_errors=True)
    shutil.rmtree(out / "model")
    assert main(["rm", "train", "--out", str(out), "--resume"]) == 0
    resumed = dict(reward_model.load_reward_model(out / "model")[0].named_parameters())
    for name, value in full.items():
        assert torch.equal(resumed[name], value), name
    assert (out / "metrics.jsonl").read_text() == metrics
