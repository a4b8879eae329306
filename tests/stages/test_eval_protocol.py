"""`openk1 eval`: Pass@1 = mean over problems of (correct samples)/k, stop-reason fractions, and
one table row per benchmark file (summary.json `benchmarks`, results.md)."""

import json
from typing import ClassVar

import pytest
import torch

from openk1.cli import main
from openk1.data.io import write_jsonl
from openk1.stages import eval as eval_stage
from openk1.types import Rollout

# prompt -> (how many of its k=4 samples answer right, their stop reasons, tokens per response)
PLAN: dict[str, tuple[int, list[str], int]] = {
    "1+1=": (3, ["normal", "normal", "max_tokens", "repeat"], 4),
    "2+2=": (1, ["normal", "normal", "normal", "max_tokens"], 6),
    "3+3=": (4, ["normal", "normal", "normal", "normal"], 2),
    "4+4=": (2, ["repeat", "repeat", "normal", "normal"], 8),
    "5+5=": (0, ["budget", "normal", "normal", "normal"], 10),
}


class FakeEngine:
    """k responses per prompt as PLAN says: the first `right` are correct, the rest wrong."""

    calls: ClassVar[list[list[str]]] = []

    def __init__(self, model, tokenizer, sampling):
        self.progress = None

    def generate(self, prompts, k, seed):
        FakeEngine.calls.append(list(prompts))
        texts, stops, lengths = [], [], []
        for p in prompts:
            right, reasons, tokens = PLAN[p]
            answer = 2 * int(p.split("+")[0])
            texts += [f"\\boxed{{{answer if i < right else answer + 1}}}" for i in range(k)]
            stops += reasons[:k]
            lengths += [tokens] * k
        n = torch.tensor(lengths)
        mask = (torch.arange(int(n.max()))[None] < n[:, None]).long()
        zeros = torch.zeros(len(texts), 1, dtype=torch.long)
        return Rollout(zeros, zeros + 1, mask, mask, mask.float(), stops, texts)


def problems_file(path, prompts):
    write_jsonl(path, [{"prompt": p, "answer": str(2 * int(p.split("+")[0]))} for p in prompts])
    return path


def test_pass_at_1_per_problem_and_stop_fractions():
    rewards = torch.tensor([1., 1., 1., 0., 0., 1., 0., 0.])
    assert eval_stage.pass_at_1(rewards, 4) == [0.75, 0.25]
    assert eval_stage.mean(eval_stage.pass_at_1(rewards, 4)) == 0.5
    stop = eval_stage.stop_fractions(["normal", "normal", "max_tokens", "repeat"])
    assert stop == {"normal": 0.5, "max_tokens": 0.25, "repeat": 0.25, "budget": 0.0}


def test_two_benchmarks(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(eval_stage, "HFEngine", FakeEngine)
    data = problems_file(tmp_path / "heldout.jsonl", ["1+1=", "2+2="])
    other = problems_file(tmp_path / "other.jsonl", ["3+3=", "4+4=", "5+5="])
    out = tmp_path / "ev"
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
                 "--set", f"benchmarks=[hard={other}]", "eval.samples_per_prompt=4"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # --data at the top level, as before: 2 problems x 4 samples, 3/4 and 1/4 right
    assert summary["accuracy"] == 0.5 and summary["pass_at_1"] == 0.5
    assert (summary["problems"], summary["samples"], summary["mean_tokens"]) == (2, 8, 5.0)
    assert summary["accuracy_by_difficulty"] == {"None": 0.5}
    heldout, hard = summary["benchmarks"]["heldout"], summary["benchmarks"]["hard"]
    assert list(summary["benchmarks"]) == ["heldout", "hard"]
    assert heldout["pass_at_1"] == 0.5 and heldout["k"] == 4 and heldout["problems"] == 2
    assert heldout["stop"] == {"normal": 5 / 8, "max_tokens": 2 / 8, "repeat": 1 / 8, "budget": 0.0}
    assert hard["pass_at_1"] == (1.0 + 0.5 + 0.0) / 3 and hard["problems"] == 3
    assert hard["mean_tokens"] == pytest.approx((2 + 8 + 10) / 3)
    assert hard["stop"] == {"normal": 9 / 12, "max_tokens": 0.0, "repeat": 2 / 12, "budget": 1 / 12}
    table = (out / "results.md").read_text().splitlines()
    assert len(table) == 4 and table[0].startswith("| benchmark | problems | k | Pass@1")
    assert table[2] == "| heldout | 2 | 4 | 0.5000 | 5.0 | 0.625 / 0.250 / 0.125 |"
    assert table[3] == "| hard | 3 | 4 | 0.5000 | 6.7 | 0.750 / 0.000 / 0.167 |"
    assert "| hard | 3 | 4 |" in capsys.readouterr().err
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["benchmark"] for r in rows] == ["heldout"] * 8 + ["hard"] * 12
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["eval/accuracy"] == 0.5 and metrics["eval/hard/pass_at_1"] == 0.5
    assert metrics["eval/heldout/stop/max_tokens"] == 0.25


def test_bad_second_file_writes_nothing(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(eval_stage, "HFEngine", FakeEngine)
    FakeEngine.calls = []
    data = problems_file(tmp_path / "heldout.jsonl", ["1+1="])
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"prompt": "2+2=", "answer": "4"}, {"prompt": "3+3="}])   # no answer
    out = tmp_path / "ev"
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
                 "--set", f"benchmarks=[{bad}]"]) == 2
    assert not out.exists() and FakeEngine.calls == []
    # two files of one name are refused too
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
                 "--set", f"benchmarks=[{data}]"]) == 2
    assert not out.exists()
