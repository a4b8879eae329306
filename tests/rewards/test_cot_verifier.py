"""Chain-of-thought verifier: the verdict parser on valid and malformed judge outputs (exact
expectations), the scoring of parsed verdicts, and one end-to-end call of a tiny random model."""

from __future__ import annotations

from pathlib import Path

import pytest

from openk1.rewards.cot_verifier import COT_TEMPLATE, CoTVerifier, parse_verdict
from openk1.types import Problem

PARSER_CASES = [
    # valid: the last object with a "correct" key decides
    ('{"correct": true}', True),
    ('{"correct": false}', False),
    ('The forms are equal.\n{"correct": true}\nThat is all.', True),
    ('```json\n{"correct": false}\n```', False),
    ('```\n{\n  "reasoning": "same",\n  "correct": true\n}\n```', True),
    ("{'correct': True}", True),
    ("{'correct': 'no'}", False),
    ('{"correct": "yes"}', True),
    ('{"correct": "Incorrect"}', False),
    ('{"correct": "TRUE"}', True),
    ('{"correct": 1}', True),
    ('{"correct": 0}', False),
    ('{"correct": true,}', True),
    ("{correct: yes}", True),
    ('{"Correct": false}', False),
    ('{"correct": false} ... on reflection {"correct": true}', True),
    ('{"correct": true} and then {"note": "x"}', True),
    ('{"verdict": {"correct": false}}', False),
    ('{"reason": "set {x} is closed", "correct": true}', True),
    ('{"reason": "it\'s \\"fine\\" }", "correct": false}', False),
    ('It\'s right: {"correct": true}', True),
    ('{{"correct": true}}', True),
    # malformed: None
    ("", None),
    ("The answer is correct.", None),
    ('"correct": true', None),
    ('{"correct": tr', None),
    ('{"correct": maybe}', None),
    ('{"correct": 2}', None),
    ('{"correct": null}', None),
    ('{"correct": [true]}', None),
    ('{"is_correct": true}', None),
    ('{"verdict": "correct"}', None),
    ('{"correct": true} then {"correct": "unsure"}', None),  # the last one decides
    ("{" * 200, None),
]


@pytest.mark.parametrize("text, expected", PARSER_CASES)
def test_parse_verdict(text: str, expected: bool | None) -> None:
    assert parse_verdict(text) is expected


def test_judge_scores_and_counts() -> None:
    judge = CoTVerifier("unused", default_reward=0.25)  # judge() never loads the model
    scores = judge.judge(['ok {"correct": true}', '{"correct": false}', "no verdict"])
    assert [(s.reward, s.verdict) for s in scores] == [
        (1.0, "cot_correct"),
        (0.0, "cot_wrong"),
        (0.25, "cot_malformed"),
    ]
    assert scores[2].details == {"judgement": "no verdict"}
    assert judge.counts == {"calls": 3, "cot_correct": 1, "cot_wrong": 1, "malformed": 1}


def test_tiny_random_model_is_malformed_default(tiny_model_dir: Path) -> None:
    judge = CoTVerifier(tiny_model_dir, max_new_tokens=12)
    problem = Problem("Factor a^2-4.", "(a+2)(a-2)", "freeform")
    first = judge.score_batch(["a^2-4", "(a-2)(a+2)"], [problem, problem])
    engine = judge.engine()
    again = judge("a^2-4", problem)
    assert judge.engine() is engine  # loaded once, then reused
    assert [(s.reward, s.verdict) for s in first] == [(0.0, "cot_malformed")] * 2
    assert again == first[0]  # greedy: the same judgement
    assert len(first[0].details["judgement"]) > 0
    assert judge.counts == {"calls": 3, "malformed": 3}


def test_prompt_template_truncation_and_chat(tiny_model_dir: Path, tmp_path: Path) -> None:
    from openk1.models import prompting
    from openk1.models.forward import tokenize
    from openk1.models.io import load_model, save_model

    judge = CoTVerifier(tiny_model_dir, max_response_chars=5)
    problem = Problem("Q?", "R", "freeform")
    expected = COT_TEMPLATE.format(prompt="Q?", answer="R", response="34567")
    assert judge.prompt("1234567", problem) == expected  # the response keeps its end
    assert expected.endswith("Response: 34567\n\nReasoning:") and '{"correct": true}' in expected
    # a judge whose tokenizer has a chat template is sent the filled template as a user turn
    model, tok = load_model(tiny_model_dir)
    tok.chat_template = "{% for m in messages %}USER: {{ m.content }}{% endfor %} JUDGE:"
    prompting.configure(tok, "chat")   # recorded with the model: its format from now on
    save_model(model, tok, tmp_path / "chat")
    chat = CoTVerifier(tmp_path / "chat", max_response_chars=5)
    sent = tokenize(chat.engine().tokenizer, [chat.prompt("1234567", problem)])[0]
    assert sent == tok(f"USER: {expected} JUDGE:", add_special_tokens=False)["input_ids"]   # no BOS on top
    plain = CoTVerifier(tmp_path / "chat", max_response_chars=5, chat_template=False)
    assert prompting.prompting(plain.engine().tokenizer).format == "plain"
    assert tokenize(plain.engine().tokenizer, [plain.prompt("1234567", problem)])[0] == tok(expected)["input_ids"]
