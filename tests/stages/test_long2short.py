"""`openk1 long2short`: sample selection rules, the RL preset, and every method end to end."""

from __future__ import annotations

import json

import pytest

from openk1.cli import main
from openk1.config import build
from openk1.data.io import write_jsonl
from openk1.errors import OpenK1Error
from openk1.stages import long2short
from openk1.types import Problem

P = [Problem("1+1=", "2", id="a"), Problem("2+2=", "4", id="b"), Problem("3+3=", "6", id="c")]
# (response, tokens, correct): a's shortest correct has 4 tokens, so with ratio 1.5 a correct
# response is rejected from 6 tokens on (5 is kept out, 6 is in), a wrong one from 5 tokens on
# (longer than the chosen: "long bad"; "bad" and "four" are not longer); b has no correct response.
GROUPS = [
    [("long ok", 6, True), ("ok", 4, True), ("bad", 3, False), ("mid", 5, True), ("bad", 3, False),
     ("long bad", 8, False), ("four", 4, False)],
    [("x", 2, False), ("y", 9, False)],
    [("six", 7, True), ("  six", 9, True)],
]


def test_shortest_correct_rows():
    rows = long2short.shortest_rows(P, GROUPS)
    assert [(r["id"], r["response"]) for r in rows] == [("a", "ok"), ("c", "six")]


def test_preference_pairs_follow_the_report():
    rows = long2short.preference_pairs(P, GROUPS, length_ratio=1.5)
    # a: chosen "ok" (4); "long ok" 6 >= 1.5 x 4 = 6 is rejected, "mid" 5 < 6 is not; of the
    # wrong ones only "long bad" (8 > 4): "bad" (3) and "four" (4) are not longer than the chosen
    # c: chosen "six" (7); "  six" 9 < 1.5 x 7 = 10.5 -> no pair; b: no correct -> no pair
    assert [(r["id"], r["chosen"], r["rejected"]) for r in rows] == [("a", "ok", "long ok"),
                                                                    ("a", "ok", "long bad")]
    assert [r["rejected"] for r in long2short.preference_pairs(P, GROUPS, 1.5, pairs_per_prompt=1)] == ["long ok"]
    # ratio 1.2: a also rejects "mid" (5 >= 4.8), c rejects "  six" (9 >= 8.4)
    assert [r["rejected"] for r in long2short.preference_pairs(P, GROUPS, 1.2)] == [
        "long ok", "mid", "long bad", "  six"]


def test_rl_section_defaults_to_the_long2short_preset():
    import torch

    from openk1.config import read_yaml
    from openk1.rewards.base import Score
    from openk1.stages import rl
    from openk1.types import Rollout

    cfg = build(long2short.Long2ShortConfig, {"rl": {"iterations": 3}})
    preset, plain = read_yaml(long2short.PRESETS / "long2short_rl.yaml"), rl.RLConfig()
    assert cfg.rl.iterations == 3                                   # the user's key wins
    assert cfg.rl.sampling.max_new_tokens == preset["sampling"]["max_new_tokens"] == 16384 // 4
    # what shortens: the length penalty, off in plain RL, on in the preset from iteration 0 ...
    assert plain.length_penalty_weight == 0 and cfg.rl.length_penalty_weight > 0
    assert cfg.rl.length_penalty_warmup == 0
    # ... so that of 4 right answers of 2, 4, 6 and 10 tokens the shorter earn more at iteration 0,
    # where plain RL rewards all 4 alike. (Not the budget: the preset's 4096 tokens, 1/4 of a 16k
    # long-CoT budget, are above plain RL's default of 64, sized for the CPU demo.)
    lengths = torch.tensor([2, 4, 6, 10])
    mask = (torch.arange(10)[None] < lengths[:, None]).long()
    ones = torch.ones(4, 10, dtype=torch.long)
    rollout = Rollout(ones[:, :2], ones[:, :2], ones * mask, mask, torch.zeros(4, 10), ["normal"] * 4,
                      texts=["\\boxed{2}"] * 4)
    def right(texts, problems, workers, rewards):
        return [Score(1.0, "correct")] * len(texts)

    batch = [P[0]]
    shortened = rl.rewards_for(rollout, batch, 4, 0, cfg.rl, right)[0]
    assert shortened.tolist() == [1.0 + cfg.rl.length_penalty_weight * x for x in (0.5, 0.25, 0.0, -0.5)]
    assert rl.rewards_for(rollout, batch, 4, 0, plain, right)[0].tolist() == [1.0] * 4


def test_demo_preset_is_valid():
    from openk1.config import read_yaml

    cfg = build(long2short.Long2ShortConfig, read_yaml(long2short.PRESETS / "long2short_demo.yaml"))
    assert cfg.methods == ["merge", "shortest_rs", "dpo", "rl"] and cfg.samples.samples_per_prompt == 8
    assert cfg.rl.length_penalty_warmup == 0 and cfg.rl.sampling.max_new_tokens < cfg.eval.sampling.max_new_tokens


def test_every_method_end_to_end(tmp_path, tiny_model_dir, monkeypatch):
    problems = [{"prompt": f"{a}+1=", "answer": str(a + 1), "difficulty": 1} for a in range(4)]
    write_jsonl(tmp_path / "train.jsonl", problems)
    write_jsonl(tmp_path / "heldout.jsonl", problems[:2])
    # per problem: the chosen (9 tokens), a correct one 20 >= 1.5 x 9 and a wrong one 12 > 9
    # tokens long: 2 DPO pairs each
    groups = [[(f"\\boxed{{{a + 1}}}", 9, True), (f"{a}+1={a + 1} so \\boxed{{{a + 1}}}", 20, True),
               ("so the answer is \\boxed{0}", 12, False)] for a in range(4)]
    drawn = []

    def draw_samples(cfg, root):
        drawn.append(1)
        return long2short.load_problems(cfg.data)[:4], groups

    monkeypatch.setattr(long2short, "draw_samples", draw_samples)
    values = {
        "model": str(tiny_model_dir), "data": str(tmp_path / "train.jsonl"),
        "eval_data": str(tmp_path / "heldout.jsonl"), "out": str(tmp_path / "l2s"),
        "eval": {"samples_per_prompt": 1, "sampling": {"max_new_tokens": 6}},
        "merge": {"short_model": str(tiny_model_dir), "weights": [0.7, 0.3]},
        "shortest_rs": {"epochs": 1, "batch_size": 2},
        "dpo": {"epochs": 1, "batch_size": 4},
        "rl": {"iterations": 1, "prompts_per_iter": 2, "samples_per_prompt": 2, "sampling": {"max_new_tokens": 6},
               "checkpoint_every": 1},
    }
    (tmp_path / "l2s.yaml").write_text(json.dumps(values))
    assert main(["long2short", "--config", str(tmp_path / "l2s.yaml")]) == 0
    summary = json.loads((tmp_path / "l2s" / "summary.json").read_text())
    assert drawn == [1]                                             # samples drawn once for RS and DPO
    for name in ("l2s_merge", "l2s_shortest_rs", "l2s_dpo", "l2s_rl"):
        entry = summary[name]
        assert 0.0 <= entry["accuracy"] <= 1.0 and 0 < entry["mean_tokens"] <= 6
        assert (tmp_path / "l2s" / name.removeprefix("l2s_") / "model" / "config.json").is_file()
        assert entry["model"].endswith("model") and f"| {name} |" in summary["table"]
    assert [s["name"] for s in summary["stages"]] == ["l2s_merge", "l2s_shortest_rs", "l2s_dpo", "l2s_rl"]
    assert (tmp_path / "l2s" / "tradeoff.png").stat().st_size > 1000
    pairs = [json.loads(x) for x in (tmp_path / "l2s" / "dpo_pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 8 and all(p["chosen"].startswith("\\boxed") for p in pairs)
    rl_cfg = (tmp_path / "l2s" / "rl" / "config.yaml").read_text()
    assert "length_penalty_warmup: 0" in rl_cfg


def test_shortest_rs_rounds_sample_the_previous_round(tmp_path, tiny_model_dir, monkeypatch):
    problems = [{"prompt": f"{a}+1=", "answer": str(a + 1)} for a in range(4)]
    write_jsonl(tmp_path / "train.jsonl", problems)
    calls = []

    def draw(cfg, root, model_dir="", round_=1):
        calls.append((model_dir, round_))
        n = 9 - 3 * round_                                     # round 1 keeps 6-token answers, round 2 3
        return long2short.load_problems(cfg.data), [[(f"\\boxed{{{a + 1}}}" + "!" * n, n, True)] for a in range(4)]

    monkeypatch.setattr(long2short, "draw_samples", draw)
    cfg = build(long2short.Long2ShortConfig, {
        "model": str(tiny_model_dir), "data": str(tmp_path / "train.jsonl"), "out": str(tmp_path / "l2s"),
        "eval_data": str(tmp_path / "train.jsonl"), "shortest_rs_rounds": 2,
        "shortest_rs": {"epochs": 1, "batch_size": 2}})
    made = long2short.run_shortest_rs(long2short.Context(cfg, tmp_path / "l2s"))
    first = str(tmp_path / "l2s" / "shortest_rs_round1" / "model")
    assert calls == [("", 1), (first, 2)]                      # round 2 samples round 1's model
    assert made["rounds"] == 2 and made["model"] == str(tmp_path / "l2s" / "shortest_rs" / "model")
    second = [json.loads(x)["response"] for x in (tmp_path / "l2s" / "shortest_rs.jsonl").read_text().splitlines()]
    assert second == [f"\\boxed{{{a + 1}}}!!!" for a in range(4)]
    assert "shortest_rs_round1/model" in (tmp_path / "l2s" / "shortest_rs" / "config.yaml").read_text()


def test_merge_needs_a_short_model(tmp_path, tiny_model_dir):
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1=", "answer": "2"}])
    cfg = build(long2short.Long2ShortConfig, {
        "model": str(tiny_model_dir), "data": str(tmp_path / "p.jsonl"), "eval_data": str(tmp_path / "p.jsonl"),
        "out": str(tmp_path / "o"), "methods": ["merge"], "reference": str(tmp_path / "ref.json")})
    (tmp_path / "ref.json").write_text(json.dumps({"accuracy": 0.5, "mean_tokens": 10.0}))
    with pytest.raises(OpenK1Error, match="merge.short_model"):
        long2short.run(cfg)
