"""`openk1 rm train --set kind=cot`: the SFT example a labelled row becomes (hand-written
expectations), the judging task's labels, an end-to-end tiny run whose model the `cot_verifier`
reward term loads, and the errors a bad row or setting gives."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from openk1.config import build
from openk1.data.io import write_jsonl
from openk1.data.judge_task import DELTAS, make_judge_rows, worked_check
from openk1.data.packing import encode_row
from openk1.errors import OpenK1Error
from openk1.models.tiny import char_tokenizer
from openk1.report.run_dir import read_metrics
from openk1.rewards.base import Score
from openk1.rewards.cot_verifier import COT_TEMPLATE, CoTVerifier
from openk1.rewards.scoring import RewardTerm, build_verifier
from openk1.stages import rm
from openk1.types import Problem

# COT_TEMPLATE filled in by hand for the row below (the char tokenizer has no chat template)
PROMPT = (
    "You are checking a response against a reference answer. The two may be written differently "
    "and still be equal, e.g. a^2 - 4 and (a+2)(a-2). Reason step by step, then end with a JSON "
    'object on its own line: {"correct": true} or {"correct": false}.\n\n'
    "Question: What is 5+8?\nReference answer: 13\nResponse: \\boxed{3*4+1}\n\nReasoning:"
)
CHECK = "3*4+1 = 12+1 = 13; reference 13; equal"


@pytest.mark.parametrize("label, reasoning, target", [
    (1, CHECK, CHECK + '\n{"correct": true}'),
    (0, CHECK, CHECK + '\n{"correct": false}'),
    (1, "", '{"correct": true}'),
    (0, "", '{"correct": false}'),
])
def test_sft_example_is_the_judge_prompt_then_check_and_verdict(label: int, reasoning: str,
                                                                target: str) -> None:
    tok = char_tokenizer()
    row = rm.cot_row(("What is 5+8?", "13", "\\boxed{3*4+1}", label, reasoning), tok)
    assert row == {"prompt": PROMPT, "response": target}
    example = encode_row(row, tok)            # <bos> + prompt chars, then target chars + <eos>
    assert example.ids == ([tok.bos_token_id] + tok(PROMPT, add_special_tokens=False)["input_ids"]
                           + tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    assert example.action_mask == [0] * (1 + len(PROMPT)) + [1] * (len(target) + 1)


def test_sft_prompt_is_what_the_verifier_sends(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The judge trained by `rm train --set kind=cot` sees, token for token, what CoTVerifier
    sends: both fill the same template and both go through the model's prompt format."""
    from openk1.models import prompting
    from openk1.models.forward import tokenize
    from openk1.models.io import load_model, save_model

    model, tok = load_model(tiny_model_dir)
    tok.chat_template = "{% for m in messages %}USER: {{ m.content }}{% endfor %} JUDGE:"
    prompting.configure(tok, "chat")   # recorded with the model: its format from now on
    save_model(model, tok, tmp_path / "chat")
    judge = CoTVerifier(tmp_path / "chat")
    tok = judge.engine().tokenizer
    row = ("What is 5+8?", "13", "\\boxed{3*4+1}", 1, "")
    problem = Problem("What is 5+8?", "13", "freeform")
    sent = judge.prompt("\\boxed{3*4+1}", problem)
    assert rm.cot_row(row, tok)["prompt"] == sent == PROMPT
    example = encode_row(rm.cot_row(row, tok), tok)
    prompt_ids = tokenize(tok, [sent])[0]
    assert prompt_ids == tok(f"USER: {PROMPT} JUDGE:", add_special_tokens=False)["input_ids"]
    assert example.ids[:len(prompt_ids)] == prompt_ids and not any(example.action_mask[:len(prompt_ids)])
    other = CoTVerifier(tmp_path / "chat", template="{prompt}|{answer}|{response}")
    assert (rm.cot_row(row, tok, "{prompt}|{answer}|{response}")["prompt"]
            == other.prompt("\\boxed{3*4+1}", problem) == "What is 5+8?|13|\\boxed{3*4+1}")


def response_value(response: str) -> int:
    """Recompute the response's value: \\boxed{a*b+c} or \\boxed{n}."""
    match = re.fullmatch(r"\\boxed\{(\d)\*(\d)\+(\d)\}|\\boxed\{(\d+)\}", response)
    assert match, response
    a, b, c, n = match.groups()
    return int(n) if n else int(a) * int(b) + int(c)


def test_judge_task_labels_are_recomputed_balanced_and_seeded(tmp_path: Path) -> None:
    rows = make_judge_rows(401, seed=3)
    assert sum(r["label"] for r in rows) == 201                 # 401 // 2 = 200 wrong ones
    for r in rows:
        value, reference = response_value(r["response"]), int(r["answer"])
        assert r["label"] == int(value == reference)
        assert r["label"] or reference - value in DELTAS
        left, right = map(int, re.fullmatch(r"What is (\d+)\+(\d+)\?", r["prompt"]).groups())
        assert left + right == reference and left >= 1 and right >= 1
        assert r["reasoning"].endswith("; equal" if r["label"] else "; not equal")
        assert f"reference {reference};" in r["reasoning"]
    plain = sum("*" not in r["response"] for r in rows) / len(rows)
    assert 0.18 < plain < 0.32                                  # number_rate 0.25
    assert make_judge_rows(401, seed=3) == rows and make_judge_rows(401, seed=4) != rows
    write_jsonl(tmp_path / "j.jsonl", rows[:3])                 # rows as rm train reads them
    assert rm.load_rows(tmp_path / "j.jsonl") == [
        (r["prompt"], r["answer"], r["response"], r["label"], r["reasoning"]) for r in rows[:3]]


def test_worked_check_by_hand() -> None:
    assert worked_check((3, 4, 1), 13) == "3*4+1 = 12+1 = 13; reference 13; 1 1 same, 3 3 same; equal"
    assert worked_check((2, 3, 4), 9) == ("2*3+4 = 6+4 = 10; reference 9; 1 0 differ, 0 9 differ; "
                                          "not equal")
    assert worked_check(27, 28) == "27; reference 28; 2 2 same, 7 8 differ; not equal"


@pytest.mark.parametrize("template", [COT_TEMPLATE, "Q: {prompt} R: {answer} A: {response} ->"])
def test_cot_run_end_to_end(tmp_path: Path, tiny_model_dir: Path, template: str) -> None:
    """64 rows, every response correct and no reasoning: the judge only has to learn to write
    {"correct": true}; 60 steps of the 2-layer test model (~5 s). Another template is used in
    training and judging, and named in `verifier_options` for the reward term."""
    data, out = tmp_path / "rows.jsonl", tmp_path / "run"
    write_jsonl(data, [{"prompt": f"{i}+1=?", "answer": i + 1, "response": str(i + 1), "label": 1}
                       for i in range(64)])
    cfg = build(rm.RMTrainConfig, {"model": str(tiny_model_dir), "data": str(data), "out": str(out),
                                   "kind": "cot", "heldout_fraction": 0.25, "epochs": 10,
                                   "batch_size": 8, "max_new_tokens": 24, "template": template,
                                   "optim": {"lr": 0.02, "lr_min": 0.002, "warmup_steps": 5}})
    summary = rm.run(cfg)
    assert summary == json.loads((out / "summary.json").read_text())
    assert (summary["kind"], summary["train_rows"], summary["heldout_rows"], summary["steps"]) == (
        "cot", 48, 16, 60)
    assert summary["heldout_majority_baseline"] == 1.0 and summary["dropped"] == 0
    assert (summary["heldout_accuracy"], summary["heldout_malformed"]) == (1.0, 0)
    options = {} if template == COT_TEMPLATE else {"template": template}
    assert summary["verifier_options"] == options and summary["model"] == str(out / "model")
    assert read_metrics(out / "metrics.jsonl")[-1]["heldout_accuracy"] == 1.0
    assert len(read_metrics(out / "sft" / "metrics.jsonl")) >= 6   # the shared trainer's log
    term = RewardTerm(name="cot_verifier", path=str(out / "model"),
                      options={"max_new_tokens": 24, **summary["verifier_options"]})
    scores = build_verifier(term).score_batch(["7", "8"], [Problem("6+1=?", "7", "freeform")] * 2)
    assert [(s.reward, s.verdict) for s in scores] == [(1.0, "cot_correct")] * 2
    assert scores[0].details["judgement"] == '{"correct": true}'


class FixedJudge(CoTVerifier):
    """Returns the given verdicts in order (no model)."""

    def __init__(self, verdicts: list[str]) -> None:
        super().__init__("unused")
        self.verdicts = verdicts

    def score_batch(self, responses, problems):  # type: ignore[no-untyped-def]
        return [Score(0.0, v) for v in self.verdicts]


def test_cot_accuracy_counts_malformed_as_wrong() -> None:
    held = [("q", "1", "r", label, "") for label in (1, 0, 1, 0, 0)]
    judge = FixedJudge(["cot_correct", "cot_correct", "cot_malformed", "cot_wrong", "cot_malformed"])
    assert rm.cot_accuracy(judge, held) == (2 / 5, 2)   # rows 1 and 4 right; 3 and 5 malformed


@pytest.mark.parametrize("value", [3, ["a"], True])
def test_bad_reasoning_names_file_row_field(tmp_path: Path, value: object) -> None:
    path = tmp_path / "l.jsonl"
    good = {"prompt": "q", "answer": "1", "response": "1", "label": 1}
    write_jsonl(path, [{**good, "reasoning": None}, {**good, "reasoning": value}])
    with pytest.raises(OpenK1Error, match=f"{re.escape(str(path))}: line 2: field 'reasoning' must be str"):
        rm.load_rows(path)
    write_jsonl(path, [{**good, "reasoning": None}, {**good, "reasoning": "ok"}])   # null = none
    assert rm.load_rows(path) == [("q", "1", "1", 1, ""), ("q", "1", "1", 1, "ok")]
    assert rm.load_labelled(path) == [("q", "1", "1", 1)] * 2


@pytest.mark.parametrize("values, message", [
    ({"kind": "judge"}, "kind"),
    ({"kind": "cot", "template": "{prompt} {answr}"}, "template: only {prompt}, {answer} and {response}"),
])
def test_bad_settings_are_refused(values: dict, message: str) -> None:
    with pytest.raises(OpenK1Error, match=re.escape(message)):
        build(rm.RMTrainConfig, values)


def test_cot_resume_is_exact(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A killed cot run resumed from its newest checkpoint (in DIR/sft) ends with the
    uninterrupted run's weights and training metrics."""
    import shutil

    import torch

    from openk1.cli import main
    from openk1.models.io import load_model

    data, out = tmp_path / "rows.jsonl", tmp_path / "run"
    write_jsonl(data, [{"prompt": f"{i}+1=?", "answer": i + 1, "response": str(i + 1 + i % 2), "label": 1 - i % 2}
                       for i in range(40)])
    args = ["rm", "train", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
            "--set", "kind=cot", "epochs=2", "batch_size=8", "heldout_fraction=0", "log_every=1",
            "checkpoint_every=4", "keep_checkpoints=0", "optim.lr=0.01", "optim.lr_min=0.001", "optim.warmup_steps=2"]
    assert main(args) == 0   # 40 rows: 5 steps per epoch, 10 in all; checkpoints 4, 8, 10
    full = dict(load_model(out / "model")[0].named_parameters())
    metrics = (out / "sft" / "metrics.jsonl").read_text()
    for step in ("step_000010", "step_000008"):   # killed after step 5: the newest left is step 4
        shutil.rmtree(out / "sft" / "checkpoints" / step)
    shutil.rmtree(out / "model")
    assert main(["rm", "train", "--out", str(out), "--resume"]) == 0
    resumed = dict(load_model(out / "model")[0].named_parameters())
    assert any(not torch.equal(full[n], v) for n, v in load_model(tiny_model_dir)[0].named_parameters())
    for name, value in full.items():
        assert torch.equal(resumed[name], value), name
    assert (out / "sft" / "metrics.jsonl").read_text() == metrics
