"""`openk1 curate`: the model filters (through a fake engine), the cache, the report, the CLI."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from openk1.cli import main
from openk1.config import build
from openk1.curate.difficulty import DifficultySettings, difficulty_label
from openk1.data.io import write_jsonl
from openk1.data.prompt_cache import PromptCache
from openk1.errors import OpenK1Error
from openk1.stages.curate import CurateConfig, curate
from openk1.types import Rollout

PROBLEMS = {   # prompt -> reference answer; no prompt is a substring of another
    "What is 17 * 23?": "391",
    "Compute the sum of the first 20 odd numbers.": "400",
    "Find the smallest prime greater than 90.": "97",
    "How many edges does a cube have?": "12",
    "What is the remainder of 2^10 divided by 7?": "2",
}


class FakeEngine:
    """A rollout engine's `generate` that answers each prompt with `right(prompt, k, seed)`
    correct boxes and the rest wrong. Called with a SamplingConfig (curate's `engine_for`), it
    stands for the engine sampling with those settings, recorded with each call."""

    def __init__(self, right, fail_on_call=None):
        self.right, self.fail_on_call, self.calls, self.sampling = right, fail_on_call, [], None

    def __call__(self, sampling):
        self.sampling = sampling
        return self

    def generate(self, prompts, samples_per_prompt, seed):
        k = samples_per_prompt
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt
        self.calls.append({"prompts": list(prompts), "k": k, "sampling": self.sampling, "seed": seed})
        out = []
        for text in prompts:
            question = next(q for q in PROBLEMS if q in text)
            n = self.right(text, k, seed)
            out += [f"\\boxed{{{PROBLEMS[question]}}}"] * n + ["\\boxed{-1}"] * (k - n)
        none = torch.zeros(len(out), 0, dtype=torch.long)   # curation reads the texts only
        return Rollout(none, none, none, none, none.float(), ["normal"] * len(out), texts=out)


def rows(**extra):
    return [{"id": f"p{i}", "prompt": q, "answer": a, "source": "hand", **extra}
            for i, (q, a) in enumerate(PROBLEMS.items())]


def cfg(**values):
    return build(CurateConfig, {"progress": False, **values})


def by_id(items):
    return {r["id"]: r for r in items}


def test_easy_to_hack_drops_a_prompt_answered_once_without_reasoning():
    hits = {"What is 17 * 23?": 1, "How many edges does a cube have?": 8}
    fake = FakeEngine(lambda text, k, seed: next((n for q, n in hits.items() if q in text), 0))
    settings = {"hack": {"template": "Q: {prompt}\nAnswer only:",
                         "sampling": {"max_new_tokens": 5, "temperature": 0.7}},
                "difficulty": {"enabled": False}}
    kept, dropped, summary = curate(rows(), cfg(**settings), engine_for=fake)
    assert [r["id"] for r in kept] == ["p1", "p2", "p4"]
    assert {r["id"]: (r["reason"], r["hack_hits"], r["reason_detail"]) for r in dropped} == {
        "p0": ("easy_to_hack", 1, "1/8 answer-only attempts right"),
        "p3": ("easy_to_hack", 8, "8/8 answer-only attempts right")}
    (call,) = fake.calls                                        # one batch of 5 prompts
    assert call["k"] == 8                                       # report: N = 8 attempts
    assert call["prompts"][0] == "Q: What is 17 * 23?\nAnswer only:"
    assert (call["sampling"].max_new_tokens, call["sampling"].temperature) == (5, 0.7)
    assert summary["removed"]["easy_to_hack"] == 2 and "pass_rate_histogram" not in summary
    assert all("pass_rate" not in r for r in kept)


def test_difficulty_pass_rates_labels_and_drop_rules():
    right = {"What is 17 * 23?": 10, "Compute the sum": 0, "smallest prime": 3,
             "edges does a cube": 2, "remainder of 2^10": 7}
    fake = FakeEngine(lambda text, k, seed: next(n for q, n in right.items() if q in text))
    settings = {"hack": {"enabled": False}}
    kept, dropped, summary = curate(rows(difficulty=2), cfg(**settings), engine_for=fake)
    assert fake.calls[0]["k"] == 10 and fake.calls[0]["sampling"].temperature == 1.0
    got = {r["id"]: (r["pass_rate"], r["difficulty"], r["difficulty_given"]) for r in kept + dropped}
    # bins [0, 0.3) hard, [0.3, 0.7) medium, [0.7, 1) easy; 0 unreachable, 1 trivial
    assert got == {"p0": (1.0, "trivial", 2), "p1": (0.0, "unreachable", 2), "p2": (0.3, "medium", 2),
                   "p3": (0.2, "hard", 2), "p4": (0.7, "easy", 2)}
    assert [r["id"] for r in dropped] == ["p0"] and dropped[0]["reason"] == "trivial"
    assert summary["removed"]["trivial"] == 1 and summary["removed"]["unreachable"] == 0
    assert summary["kept_at_extremes"] == {"trivial": 0, "unreachable": 1}
    assert summary["pass_rate_histogram"] == {"0.00": 1, "0.10": 0, "0.20": 1, "0.30": 1, "0.40": 0,
                                              "0.50": 0, "0.60": 0, "0.70": 1, "0.80": 0, "0.90": 0,
                                              "1.00": 1}
    assert summary["difficulty_counts"] == {"unreachable": 1, "hard": 1, "medium": 1, "easy": 1, "trivial": 1}
    assert summary["mean_pass_rate"] == pytest.approx((1 + 0 + 0.3 + 0.2 + 0.7) / 5)
    # the other choice: keep trivial prompts, drop unreachable ones; custom bins
    fake.calls.clear()
    settings["difficulty"] = {"drop_trivial": False, "drop_unreachable": True, "samples_per_prompt": 10,
                              "bin_edges": [0.5], "bin_labels": ["hard", "easy"]}
    kept, dropped, summary = curate(rows(), cfg(**settings), engine_for=fake)
    assert [(r["id"], r["reason"]) for r in dropped] == [("p1", "unreachable")]
    assert summary["kept_at_extremes"] == {"trivial": 1, "unreachable": 0}
    assert by_id(kept)["p2"]["difficulty"] == "hard" and by_id(kept)["p4"]["difficulty"] == "easy"
    assert "difficulty_given" not in by_id(kept)["p2"]


def test_difficulty_label_and_bin_validation():
    s = DifficultySettings()
    assert [difficulty_label(r, s) for r in (0, 0.1, 0.29, 0.3, 0.69, 0.7, 0.9, 1)] == [
        "unreachable", "hard", "hard", "medium", "medium", "easy", "easy", "trivial"]
    with pytest.raises(OpenK1Error, match="bin_labels needs one label more"):
        cfg(difficulty={"bin_edges": [0.5], "bin_labels": ["a"]})
    with pytest.raises(OpenK1Error, match="hack.template"):
        cfg(hack={"template": "no placeholder"})


def test_model_filters_skip_rows_without_a_verifier_and_dropped_rows():
    fake = FakeEngine(lambda text, k, seed: 0)
    data = rows() + [{"id": "essay", "prompt": "Write a short essay on mental multiplication.",
                      "answer": "a story", "type": "freeform"},
                     {"id": "tf", "prompt": "True or false: 391 = 17 * 23.", "answer": "True"}]
    kept, _, summary = curate(data, cfg(), engine_for=fake)
    sent = [p for c in fake.calls for p in c["prompts"]]
    assert not any("essay" in p or "True or false" in p for p in sent)
    assert summary["not_scored"] == 1 and "pass_rate" not in by_id(kept)["essay"]
    assert summary["generation"]["difficulty"]["prompts"] == 5


def seeded(text, k, seed):
    """Right answers depend on the prompt AND the batch seed: resumed == uninterrupted iff the
    resumed run regenerates each batch with the seed the uninterrupted run used."""
    return int(hashlib.sha256(f"{text}|{seed}".encode()).hexdigest(), 16) % (k + 1)


def test_resume_from_cache_makes_no_calls_for_cached_prompts(tmp_path):
    settings = {"prompts_per_batch": 2, "hack": {"enabled": False}, "difficulty": {"drop_trivial": False}}
    full = FakeEngine(seeded)
    reference = curate(rows(), cfg(out=str(tmp_path / "a"), **settings), engine_for=full)
    assert len(full.calls) == 3                                  # 5 prompts in batches of 2
    again = FakeEngine(seeded)
    assert curate(rows(), cfg(out=str(tmp_path / "a"), **settings), engine_for=again) == (
        reference[0], reference[1], {**reference[2], "generation": {"difficulty": {
            "prompts": 5, "cached": 5, "generated": 0, "generation_calls": 0}}})
    assert again.calls == []
    # interrupted after the first batch, then resumed: only batches 2 and 3 are generated
    broken = FakeEngine(seeded, fail_on_call=1)
    with pytest.raises(KeyboardInterrupt):
        curate(rows(), cfg(out=str(tmp_path / "b"), **settings), engine_for=broken)
    assert len((tmp_path / "b" / "cache.jsonl").read_text().splitlines()) == 2
    resumed = FakeEngine(seeded)
    kept, dropped, summary = curate(rows(), cfg(out=str(tmp_path / "b"), **settings), engine_for=resumed)
    assert [c["prompts"] for c in resumed.calls] == [list(PROBLEMS)[2:4], list(PROBLEMS)[4:]]
    assert [c["seed"] for c in resumed.calls] == [c["seed"] for c in full.calls[1:]]
    assert (kept, dropped) == reference[:2]
    assert summary["generation"]["difficulty"]["cached"] == 2
    # a changed setting misses the cache
    other = FakeEngine(seeded)
    curate(rows(), cfg(out=str(tmp_path / "b"), **{**settings, "difficulty": {"sampling": {"temperature": 0.8}}}),
           engine_for=other)
    assert len(other.calls) == 3


def test_cache_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text(json.dumps({"key": "a", "rewards": [1.0, 0.0]}) + "\n" + '{"key": "b", "rew')
    cache = PromptCache(path)
    assert cache.get("a") == [1.0, 0.0] and cache.get("b") is None
    cache.add({"b": [0.0]})
    assert [json.loads(x)["key"] for x in path.read_text().splitlines()] == ["a", "b"]


def test_cli_end_to_end_with_the_tiny_model(tmp_path, tiny_model_dir):
    data = tmp_path / "in.jsonl"
    items = [{"id": f"s{i}", "prompt": f"{a}+{b}=", "answer": str(a + b), "domain": "arithmetic",
              "difficulty": 1, "short_response": f"\\boxed{{{a + b}}}"}
             for i, (a, b) in enumerate([(12, 5), (40, 7), (33, 3), (71, 8)])]
    items += [{"id": "mc", "prompt": "What is 2+3?\nA. 4\nB. 5", "answer": "B"},
              {"id": "dup", "prompt": "12 + 5 =", "answer": "17"},
              {"id": "empty", "prompt": "Prove that 1 < 2.", "answer": ""}]
    write_jsonl(data, items)
    out = tmp_path / "out"
    args = ["curate", "--data", str(data), "--out", str(out), "--model", str(tiny_model_dir),
            "--set", 'hack.template="{prompt}"', "hack.sampling.max_new_tokens=6",
            "difficulty.sampling.max_new_tokens=6", "difficulty.samples_per_prompt=3", "progress=false"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    kept = [json.loads(x) for x in (out / "curated.jsonl").read_text().splitlines()]
    dropped = [json.loads(x) for x in (out / "dropped.jsonl").read_text().splitlines()]
    assert {r["id"]: r["reason"] for r in dropped} == {"mc": "multiple_choice", "dup": "duplicate",
                                                       "empty": "no_answer"}
    # a random model solves nothing: every arithmetic row is unreachable, labelled and kept
    assert [r["id"] for r in kept] == ["s0", "s1", "s2", "s3"]
    for row, given in zip(kept, items):
        assert {k: row[k] for k in given if k != "difficulty"} == {k: v for k, v in given.items() if k != "difficulty"}
        assert (row["pass_rate"], row["difficulty"], row["difficulty_given"]) == (0.0, "unreachable", 1)
        assert row["tags"] == ["arithmetic"]
    assert summary["removed"] == {**{r: 0 for r in summary["removed"]}, "multiple_choice": 1,
                                  "duplicate": 1, "no_answer": 1}
    assert sum(summary["removed"].values()) == summary["dropped_rows"] == len(dropped) == 3
    assert summary["pass_rate_histogram"]["0.00"] == 4 and summary["model_filters"] is True
    assert summary["generation"]["hack"]["prompts"] == 4
    assert summary["plots"] == [str(out / n) for n in ("filters.png", "domains.png", "pass_rate.png")]
    for name in summary["plots"]:
        assert Path(name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "config.yaml").is_file() and len((out / "cache.jsonl").read_text().splitlines()) == 8
    assert not [p for p in out.iterdir() if p.name.startswith(".")]   # no temp file left
    assert main(args) == 2                                             # a run is there
    assert main([*args, "--resume"]) == 0                              # resumed: all cached
    assert json.loads((out / "summary.json").read_text())["generation"]["difficulty"]["cached"] == 4


def test_without_model_only_model_free_filters_run(tmp_path):
    data = tmp_path / "in.jsonl"
    write_jsonl(data, rows(difficulty=3))
    assert main(["curate", "--data", str(data), "--out", str(tmp_path / "o"), "--set", "progress=false"]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    kept = [json.loads(x) for x in (tmp_path / "o" / "curated.jsonl").read_text().splitlines()]
    assert summary["model_filters"] is False and summary["generation"] == {}
    assert [r["difficulty"] for r in kept] == [3] * 5 and "pass_rate" not in kept[0]
    assert not (tmp_path / "o" / "pass_rate.png").exists() and not (tmp_path / "o" / "cache.jsonl").exists()
    assert (tmp_path / "o" / "dropped.jsonl").read_text() == ""


def test_tagging_with_the_model(tiny):
    """The model tagger picks the domain name with the highest mean log-prob per token."""
    import torch

    model, tokenizer = tiny
    domains = ["alpha", "beta", "gamma"]          # names the keyword tagger never returns
    prompt = "Find the pH of a 0.01 M acid."
    scores = []
    with torch.no_grad():
        for d in domains:
            ids = tokenizer(prompt + "\nDomain:", add_special_tokens=True)["input_ids"]
            name = tokenizer(" " + d, add_special_tokens=False)["input_ids"]
            logits = model(input_ids=torch.tensor([ids + name])).logits[0]
            logp = torch.log_softmax(logits[len(ids) - 1:-1], -1).gather(-1, torch.tensor(name)[:, None])
            scores.append(float(logp.mean()))
    expected = domains[scores.index(max(scores))]
    settings = {"tagging": {"method": "model", "domains": domains},
                "hack": {"enabled": False}, "difficulty": {"enabled": False}}
    data = [{"prompt": prompt, "answer": "2"}, {"prompt": "Sort an array.", "answer": "x", "domain": "code"}]
    kept, _, summary = curate(data, cfg(**settings), model, tokenizer)
    assert kept[0]["domain"] == expected and kept[0]["tags"] == [expected]
    assert kept[1]["domain"] == "code" and summary["tagged_by"] == {"model": 1, "given": 1}
    with pytest.raises(OpenK1Error, match="tagging.method=model needs a model"):
        curate(data, cfg(tagging={"method": "model"}))


@pytest.mark.parametrize("row, message", [
    ({"answer": "2"}, "line 2: missing field 'prompt'"),
    ({"prompt": 3, "answer": "2"}, "line 2: field 'prompt' must be str, got int"),
    ({"prompt": "x", "answer": "2", "type": "essay"}, "line 2: field 'type' must be one of"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, row, message, capsys):
    data = tmp_path / "bad.jsonl"
    write_jsonl(data, [{"prompt": "1+1=", "answer": "2"}, row])
    assert main(["curate", "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert f"{data}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "o" / "curated.jsonl").exists()


def test_balance_targets_that_match_no_domain_fail_before_generating():
    fake = FakeEngine(lambda *a: 0)
    with pytest.raises(OpenK1Error, match="names none of the domains present"):
        curate(rows(), cfg(balance={"targets": {"code": 1.0}}), engine_for=fake)
    assert fake.calls == []
