"""Chain-of-thought reward model (report §2.3.5): a generative model reads the
question, the reference answer and the response, reasons step by step, then writes a JSON
verdict such as {"correct": true}. The report's CoT reward model reached 98.5% spot-check
accuracy on math (classic value-head RM: 84.4%), and its RL used it.

Any Hugging Face causal LM directory works; generation is greedy through `HFEngine`. The prompt
is `COT_TEMPLATE` (rendered with the tokenizer's chat template when it has one):

    You are checking a response against a reference answer. The two may be written
    differently and still be equal, e.g. a^2 - 4 and (a+2)(a-2). Reason step by step, then end
    with a JSON object on its own line: {"correct": true} or {"correct": false}.

    Question: {prompt}
    Reference answer: {answer}
    Response: {response}

    Reasoning:

Parsing (`parse_verdict`): the last {...} object in the output that has a key "correct"
(any case) decides; its value may be a bool, "true"/"false", "yes"/"no", "correct"/"incorrect"
or 1/0. Code fences, single quotes, Python literals (True), bare keys, trailing commas and any
text around the object are tolerated. No such object, an unclosed one, or an unknown value is
malformed: reward `default_reward` (0 unless configured), verdict "cot_malformed", counted in
`CoTVerifier.counts["malformed"]`.
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openk1.models.io import load_model
from openk1.models.prompting import PromptSettings
from openk1.rewards.base import Score
from openk1.rollout.engine import requests_for
from openk1.rollout.hf import HFEngine, SamplingConfig
from openk1.types import Problem

COT_TEMPLATE = (
    "You are checking a response against a reference answer. The two may be written differently "
    "and still be equal, e.g. a^2 - 4 and (a+2)(a-2). Reason step by step, then end with a JSON "
    'object on its own line: {{"correct": true}} or {{"correct": false}}.\n\n'
    "Question: {prompt}\nReference answer: {answer}\nResponse: {response}\n\nReasoning:"
)
TRUE_WORDS = frozenset({"true", "yes", "correct", "1"})
FALSE_WORDS = frozenset({"false", "no", "incorrect", "wrong", "0"})
MAX_CANDIDATES = 64  # `{` positions tried, from the end of the output
JUDGEMENT_CHARS = 500  # tail of the judge's output kept in Score.details
_BARE_RE = re.compile(r"""["']?\bcorrect\b["']?\s*[:=]\s*["']?([A-Za-z0-9]+)""", re.IGNORECASE)
_JSON_WORDS_RE = re.compile(r"\b(true|false|null)\b")


def parse_verdict(text: str) -> bool | None:
    """The verdict of a judge's output: True / False, or None when malformed (rules: module doc).

    >>> parse_verdict('equal after expanding.\\n```json\\n{"correct": true}\\n```\\nDone.')
    True
    >>> [parse_verdict(t) for t in ("{'correct': 'no'}", '{"correct": maybe}', "yes")]
    [False, None, None]
    """
    starts = [i for i, ch in enumerate(text) if ch == "{"][-MAX_CANDIDATES:]
    for start in reversed(starts):
        end = _closing_brace(text, start)
        if end is None:
            continue
        found, value = _correct_field(text[start : end + 1])
        if found:
            return value
    return None


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the `}` closing the `{` at `start`; braces inside quoted strings do not count."""
    depth, quote, escaped = 0, "", False
    for i in range(start, len(text)):
        ch = text[i]
        if escaped:
            escaped = False
        elif quote:
            escaped, quote = ch == "\\", "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "{}":
            depth += 1 if ch == "{" else -1
            if depth == 0:
                return i
    return None


def _correct_field(obj: str) -> tuple[bool, bool | None]:
    """(whether the object text has a "correct" key, its value as a bool or None)."""
    parsed = _as_dict(obj)
    if parsed is None:
        matches = _BARE_RE.findall(obj)
        return (True, _as_bool(matches[-1])) if matches else (False, None)
    keys = [k for k in parsed if str(k).strip().lower() == "correct"]
    return (True, _as_bool(parsed[keys[-1]])) if keys else (False, None)


def _as_dict(obj: str) -> dict[Any, Any] | None:
    """The object as a dict via JSON, else as a Python literal (single quotes, True, `,}`)."""
    for parse in (json.loads, _python_literal):
        try:
            value = parse(obj)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None


def _python_literal(obj: str) -> Any:
    words = {"true": "True", "false": "False", "null": "None"}
    return ast.literal_eval(_JSON_WORDS_RE.sub(lambda m: words[m[1]], obj))


def _as_bool(value: Any) -> bool | None:
    """True/False for a recognised verdict value, None otherwise.

    >>> [_as_bool(v) for v in (True, 0, 1.0, " Yes.", "INCORRECT", 2, None, "maybe")]
    [True, False, True, True, False, None, None, None]
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value) if value in (0, 1) else None
    if isinstance(value, str):
        word = value.strip().strip(".!\"'").lower()
        return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None
    return None


def render_prompt(
    tokenizer: Any,
    prompt: str,
    answer: str,
    response: str,
    template: str = COT_TEMPLATE,
    max_response_chars: int = 4000,
) -> str:
    """The judge's prompt: `template` filled in; the engine puts it in the judge model's prompt
    format (models/prompting.py: its chat template when it has one, unless `chat_template` is
    false). Long responses keep their last `max_response_chars` characters. `CoTVerifier`
    judges with it and `openk1 rm train --set kind=cot` trains on it (the SFT prompt in the same
    format), so both see the same tokens.

    >>> from openk1.models.tiny import char_tokenizer
    >>> render_prompt(char_tokenizer(), "1+1?", "2", "so 2", template="{prompt}|{answer}|{response}")
    '1+1?|2|so 2'
    """
    return template.format(prompt=prompt, answer=answer, response=response[-max_response_chars:])


class CoTVerifier:
    """`(response, problem) -> Score` judged by a generative model; `score_batch` judges many
    rows in one batched generation (what `score_many` calls). The model loads once, on first
    use. Verdicts: "cot_correct" (reward 1), "cot_wrong" (0), "cot_malformed" (default_reward);
    details {"judgement": the tail of the model's output}. `counts` tallies calls and verdicts.

    >>> judge = CoTVerifier("models/judge", max_new_tokens=1024)          # doctest: +SKIP
    >>> judge("... so (a+2)(a-2).", Problem("Factor a^2-4.", "a^2-4"))    # doctest: +SKIP
    Score(reward=1.0, verdict='cot_correct', details={'judgement': '... {"correct": true}'})
    """

    def __init__(
        self,
        model_dir: str | Path,
        max_new_tokens: int = 512,
        default_reward: float = 0.0,
        batch_size: int = 16,
        max_response_chars: int = 4000,
        chat_template: bool = True,
        device: str = "cpu",
        template: str = COT_TEMPLATE,
    ) -> None:
        self.model_dir, self.max_new_tokens, self.default_reward = (
            str(model_dir),
            max_new_tokens,
            default_reward,
        )
        self.batch_size, self.max_response_chars, self.chat_template = (
            batch_size,
            max_response_chars,
            chat_template,
        )
        self.device, self.template = device, template
        self.counts: Counter[str] = Counter()  # "calls", "cot_correct", "cot_wrong", "malformed"
        self._engine: HFEngine | None = None

    def engine(self) -> HFEngine:
        """The greedy generation engine, built (and the model loaded) on the first call only."""
        if self._engine is None:
            model: Any
            # the judge's prompt format: its chat template (auto), or plain text when told not to
            model, tokenizer = load_model(self.model_dir, prompts=PromptSettings(
                prompt_format="auto" if self.chat_template else "plain"))
            sampling = SamplingConfig(
                temperature=0.0, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size
            )
            self._engine = HFEngine(model.to(self.device).eval(), tokenizer, sampling)
        return self._engine

    def prompt(self, response: str, problem: Problem) -> str:
        """The judge's prompt (`render_prompt` with this verifier's settings)."""
        return render_prompt(
            self.engine().tokenizer,
            problem.prompt,
            problem.answer,
            response,
            template=self.template,
            max_response_chars=self.max_response_chars,
        )

    def __call__(self, response: str, problem: Problem) -> Score:
        return self.score_batch([response], [problem])[0]

    def score_batch(self, responses: Sequence[str], problems: Sequence[Problem]) -> list[Score]:
        """One greedy verdict per response. Problems with images show a vision-language judge
        their images: the judge's prompt keeps the question's `<image>` markers, expanded for the
        problem's images (rollout/engine.py `requests_for`)."""
        prompts = [self.prompt(r, p) for r, p in zip(responses, problems, strict=True)]
        engine = self.engine()   # requests_for: = engine.generate(prompts, 1, 0) for text problems
        rollout = engine.sample(requests_for(engine.tokenizer, prompts, 1, 0, [p.images for p in problems]))
        return self.judge(rollout.texts)

    def judge(self, outputs: Sequence[str]) -> list[Score]:
        """Scores of the judge's raw outputs (the parsing step, separate for testing)."""
        scores = []
        for text in outputs:
            verdict = parse_verdict(text)
            details = {"judgement": text[-JUDGEMENT_CHARS:]}
            if verdict is None:
                scores.append(Score(self.default_reward, "cot_malformed", details))
            else:
                scores.append(
                    Score(float(verdict), "cot_correct" if verdict else "cot_wrong", details)
                )
            self.counts.update(["calls", "malformed" if verdict is None else scores[-1].verdict])
        return scores
