"""`openk1 longcot`: keep rules, acceptance statistics, build -> dataset -> SFT."""

import json
import random
from typing import ClassVar

import torch
import yaml

from openk1.cli import main
from openk1.data.io import write_jsonl
from openk1.stages import longcot
from openk1.types import Problem, Rollout


def test_choose_rules():
    ok = [("bb", 2), ("a", 1), ("ccc", 3)]
    assert longcot.choose(ok, "shortest", random.Random(0)) == ["a"]
    assert longcot.choose(ok, "longest", random.Random(0)) == ["ccc"]
    assert longcot.choose(ok, "all", random.Random(0)) == ["bb", "a", "ccc"]
    assert longcot.choose(ok, "random", random.Random(0))[0] in {"a", "bb", "ccc"}
    assert longcot.choose([], "shortest", random.Random(0)) == []


def test_acceptance_by_domain_and_difficulty():
    problems = [Problem("p", "1", domain="x", difficulty=1), Problem("q", "2", domain="x", difficulty=2),
                Problem("r", "3", domain="y", difficulty=2)]
    stats = longcot.acceptance(problems, correct=[2, 0, 4], k=4)
    assert stats["all"]["sample_acceptance"] == 6 / 12 and stats["all"]["prompt_acceptance"] == 2 / 3
    assert stats["difficulty/2"]["correct"] == 4 and stats["difficulty/2"]["samples"] == 8
    assert stats["domain/x"]["prompt_acceptance"] == 0.5 and stats["domain/y"]["sample_acceptance"] == 1.0


class FakeEngine:
    """Answers every templated prompt with two traces: a long correct one, a short correct one,
    a wrong one and an unfinished (max_tokens) correct one, in that order."""

    seen: ClassVar[list[str]] = []

    def __init__(self, model, tokenizer, sampling):
        pass

    def generate(self, prompts, k, seed):
        FakeEngine.seen = prompts
        texts, stops = [], []
        for p in prompts:
            a, b = p.split("\n")[-1].rstrip("=").split("+")
            s = int(a) + int(b)
            texts += [f"plan\ncheck ok\n\\boxed{{{s}}}", f"\\boxed{{{s}}}", "\\boxed{0}", f"\\boxed{{{s}}}"]
            stops += ["normal", "normal", "normal", "max_tokens"]
        lengths = torch.tensor([len(t) for t in texts])
        mask = (torch.arange(int(lengths.max()))[None] < lengths[:, None]).long()
        zeros = torch.zeros(len(texts), 1, dtype=torch.long)
        return Rollout(zeros, zeros + 1, mask, mask, mask.float(), stops, texts)


def test_build_then_train(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(longcot, "HFEngine", FakeEngine)
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"{a}+2=", "answer": str(a + 2), "difficulty": 1 + a % 2,
                                         "domain": "arithmetic"} for a in range(3)])
    out = tmp_path / "lc"
    assert main(["longcot", "build", "--model", str(tiny_model_dir), "--data", str(tmp_path / "p.jsonl"),
                 "--out", str(out), "--set", "build.template=\"Show your work.\\n{prompt}\"",
                 "build.samples_per_prompt=4", "build.keep=longest"]) == 0
    assert FakeEngine.seen[0] == "Show your work.\n0+2="
    rows = [json.loads(x) for x in (out / "longcot.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["0+2=", "1+2=", "2+2="]            # the plain prompt
    assert rows[1]["response"] == "plan\ncheck ok\n\\boxed{3}"               # longest verified, finished
    stats = json.loads((out / "longcot_stats.json").read_text())
    assert stats["all"]["sample_acceptance"] == 6 / 12 and stats["difficulty/1"]["prompts"] == 2
    # `train` continues the build's run: its config is the base, a build key may not change
    assert main(["longcot", "train", "--model", str(tiny_model_dir), "--out", str(out),
                 "--set", "build.samples_per_prompt=2"]) == 2
    assert main(["longcot", "train", "--model", str(tiny_model_dir), "--out", str(out),
                 "--set", "epochs=2", "batch_size=2", "max_seq_len=64"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and (out / "sft" / "model" / "config.json").exists()
    assert summary["build"]["rows"] == len(rows)                             # the build's record kept
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["action"], config["epochs"], config["build"]["samples_per_prompt"]) == ("train", 2, 4)
    assert main(["longcot", "train", "--model", str(tiny_model_dir), "--out", str(out)]) == 2   # done
