r"""Format filter, `curate.format` (report §2.1, "accurate evaluability"): a row must carry a
reference the verifier can check, and must not be a question a rule-based verifier cannot
judge fairly.

- `unusable_answer` (`no_answer`): a non-empty, non-placeholder answer of at most
  `max_answer_chars` characters; tests for code rows.
- `detect_format` (`multiple_choice`, `true_false`, `proof`): a guess is right 1 time in 2-5,
  and a proof has no single answer.

    >>> detect_format("True or false: every prime is odd.").kind
    'true_false'
    >>> detect_format("Show your work and compute 17 * 23.") is None
    True
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from openk1.config import Section
from openk1.curate.rows import Row, alive, drop
from openk1.data.images import data_dir, resolve_images
from openk1.data.io import to_problem
from openk1.errors import OpenK1Error
from openk1.types import PROBLEM_TYPES


class FormatSettings(Section):
    """The reference-answer check always runs; `enabled` switches the format filter."""

    enabled: bool = Field(True, description="the format filter (the reference-answer check always runs)")
    max_answer_chars: int = Field(300, gt=0,
                                  description="a longer reference is a proof or an essay: dropped as no_answer")


# ---------------------------------------------------------------------------------------------
# Reference answers

PLACEHOLDER_ANSWERS = frozenset({
    "", "-", "?", "n/a", "na", "nan", "null", "none given", "tbd", "omitted", "proof", "qed",
    "see proof", "see solution", "see below", "see explanation", "see the proof", "see above",
})


def unusable_answer(row: dict[str, Any], max_chars: int) -> str | None:
    """Why `row` has no checkable reference (None if it has one).

    >>> unusable_answer({"prompt": "1+1=", "answer": "2"}, 300) is None
    True
    >>> unusable_answer({"prompt": "Prove it.", "answer": "See proof."}, 300)
    "placeholder answer 'See proof.'"
    """
    if row.get("type") == "code":
        return None if row.get("tests") else "code row without tests"
    answer = row.get("answer")
    if answer is None:
        return "missing answer"
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        return f"answer is a {type(answer).__name__}, not a string or number"
    text = str(answer).strip()
    if text.lower().rstrip(".") in PLACEHOLDER_ANSWERS:
        return f"placeholder answer {text!r}" if text else "empty answer"
    if len(text) > max_chars:
        return f"answer longer than {max_chars} characters (a proof or an essay, not a checkable value)"
    return None


# ---------------------------------------------------------------------------------------------
# Format filter: multiple choice, true/false, proof

@dataclass(frozen=True)
class FormatHit:
    kind: str        # "multiple_choice" | "true_false" | "proof"
    evidence: str    # the text that decided it


# An option label, captured as (label, strong). Strong labels are the unmistakable MC layouts.
_LINE_START = r"(?:^[ \t]*|(?<=\S {2})|(?<=\t)|(?<=[:\uff1a]\s))"
_LABEL_PATTERNS: tuple[tuple[re.Pattern[str], bool], ...] = (
    # AMC LaTeX: $\textbf{(A) }\ 12 \qquad \textbf{(B) }\ 15$
    (re.compile(r"\\(?:textbf|mathrm|text|mathbf|rm|bf)\s*\{\s*\(\s*([A-Ea-e])\s*\)"), True),
    # (A) 12 / [B] 15 / (1) ... / (a) ... -- not a function argument such as f(A) or P(B)
    (re.compile(r"(?<![\w)\]}\\^_'])[(\[]\s*([A-Ha-h]|[1-9])\s*[)\]](?=\s|$|\\|\$)", re.MULTILINE), True),
    # A) 12 / b) 15 / 3) ... at the start of the text or after whitespace
    (re.compile(r"(?:^|(?<=\s))([A-Ha-h]|[1-9])\)(?=\s)", re.MULTILINE), True),
    # A. 12 at the start of a line, after two spaces, a tab or "Options:"
    (re.compile(_LINE_START + r"([A-H])\.(?=\s)", re.MULTILINE), True),
    (re.compile(_LINE_START + r"([a-h]|[1-9])\.(?=\s)", re.MULTILINE), False),
    # A: 12 (cn_k12 layout; also dialogue "A: I am a knight", hence weak)
    (re.compile(_LINE_START + r"([A-H]|[a-h]|[1-9])\s?[:\uff1a](?=\s)", re.MULTILINE), False),
    # A. 12 B. 15 inline after one space (weak: "from A. Then B. ..." is prose)
    (re.compile(r"(?<=\s)([A-H])\.(?=\s)"), False),
    # circled numbers (Chinese exam statements): ① ... ② ...
    (re.compile(r"([\u2460-\u2468])"), False),
)
_CHOICE_CUE = re.compile(
    r"\bwhich\s+(?:one\s+)?of\s+the\s+(?:following|options|choices|statements|answers)\b|"
    r"\b(?:choose|select|pick|circle)\s+(?:the\s+)?(?:correct|best|right|one|answer|letter|option)\b|"
    r"\b(?:answer\s+)?(?:options|choices)\s*[:\uff1a]|"
    r"\bcorrect\s+(?:answer|option|choice|statement)s?\b|\bbest\s+(?:answer|describes)\b|"
    r"\(\s*\)",
    re.IGNORECASE)
_TASK_VERB = re.compile(
    r"^\s*(?:find|compute|calculate|determine|evaluate|solve|show|prove|what|how|express|simplify|"
    r"write|give|explain|list|sketch|state|let|if|suppose|then|use|draw|is|are|does|do)\b", re.IGNORECASE)


@dataclass(frozen=True)
class _Label:
    family: str      # "upper" | "lower" | "digit" | "circled"
    ordinal: int     # A/a/1/① -> 1
    start: int
    end: int
    strong: bool


def _labels(text: str) -> list[_Label]:
    found: dict[int, _Label] = {}
    for pattern, strong in _LABEL_PATTERNS:
        for m in pattern.finditer(text):
            ch = m.group(1)
            if "\u2460" <= ch <= "\u2468":
                family, ordinal = "circled", ord(ch) - 0x2460 + 1
            elif ch.isdigit():
                family, ordinal = "digit", int(ch)
            else:
                family, ordinal = ("upper" if ch.isupper() else "lower"), ord(ch.lower()) - 96
            label = _Label(family, ordinal, m.start(), m.end(), strong)
            if m.start() not in found or strong:
                found[m.start()] = label
    return sorted(found.values(), key=lambda x: x.start)


def _chain(labels: list[_Label], family: str) -> list[_Label]:
    """The first run A, B, C, ... (in text order) of one label family."""
    chain: list[_Label] = []
    for label in labels:
        if label.family == family and label.ordinal == len(chain) + 1:
            chain.append(label)
    return chain


def _items(text: str, chain: list[_Label]) -> list[str]:
    """The text after each label up to the next label (the last one: to the end of its line)."""
    ends = [nxt.start for nxt in chain[1:]] + [len(text)]
    items = [text[label.end:end] for label, end in zip(chain, ends)]
    items[-1] = items[-1].split("\n", 1)[0]
    return [re.sub(r"\\q?quad|\\[ ,;!]|[$~{}]", " ", i).strip() for i in items]


def _answer_like(item: str, allow_relations: bool) -> bool:
    """An item reads like a choice value (short, numeric or mathematical), not a task."""
    if not item or len(item) > 40 or item.rstrip().endswith("?") or _TASK_VERB.match(item):
        return False
    if not allow_relations and re.search(r"[=<>\u2264\u2265]", item):
        return False
    return bool(re.search(r"[\d\\^/]", item)) or len(item.split()) <= 2


def _options(text: str, answer: str) -> str | None:
    """Evidence of a list of answer options, or None."""
    labels = _labels(text)
    cue = _CHOICE_CUE.search(text)
    letter_answer = re.fullmatch(r"\s*\(?\s*([A-E])\s*\)?\s*\.?\s*|\s*\\textbf\{\s*\(([A-E])\)", answer or "")
    for family in ("upper", "lower", "digit", "circled"):
        chain = _chain(labels, family)
        if len(chain) < 2:
            continue
        items = _items(text, chain)
        evidence = text[chain[0].start:chain[1].end]
        if family == "upper" and all(label.strong for label in chain):
            return evidence
        if cue or letter_answer:
            return evidence
        enough = len(chain) >= (2 if family == "upper" else 3)
        if enough and all(_answer_like(i, allow_relations=family == "upper") for i in items):
            return evidence
    return None


_TRUE_FALSE_STRONG = re.compile(
    r"\btrue\s*(?:or|/)\s*false\b|\bfalse\s*(?:or|/)\s*true\b|\(\s*T\s*/\s*F\s*\)|\bT\s*/\s*F\b|"
    r"\byes\s*(?:or|/)\s*no\b|\bno\s*(?:or|/)\s*yes\b|\bcorrect\s+or\s+incorrect\b|"
    r"\bvalid\s+or\s+invalid\b|\bagree\s+or\s+disagree\b|"
    r"\b(?:is|are)\s+(?:the\s+following|this|these|each\s+of\s+the\s+following)\s+"
    r"(?:statements?|claims?|assertions?|propositions?)\s+(?:true|correct|valid)\b",
    re.IGNORECASE)
_TRUE_FALSE_WEAK = re.compile(
    r"\b(?:determine|decide|state|check|tell|say|indicate|judge)\s+(?:whether|if)\b|"
    r"\bis\s+it\s+(?:true|possible|the\s+case)\s+that\b|"
    r"(?:^|[.?!]\s+)(?:is|are|does|do|can|could|will|would|has|have|should|must)\s+[^.?!]*\?\s*$",
    re.IGNORECASE | re.MULTILINE)
_BINARY_ANSWER = re.compile(
    r"\s*(?:\\text\{)?\s*(?:yes|no|true|false|correct|incorrect|valid|invalid|possible|impossible|"
    r"converges?|diverges?|exists?|does\s+not\s+exist)\s*\}?\s*[.!]?\s*", re.IGNORECASE)
_PROOF = re.compile(
    r"\b(?:prove|disprove|proving)\b|"
    r"\bshow\s+(?:rigorously\s+|formally\s+|carefully\s+)?(?:that|why)\b|"
    r"\b(?:demonstrate|verify|establish|deduce|justify|argue|explain)\s+(?:that|why)\b|"
    r"\b(?:give|write|provide|present)\s+(?:a|an)\s+(?:\w+\s+)?(?:proof|argument)\b|"
    r"\bproof\s+(?:that|of\s+the\s+(?:claim|statement|theorem|fact))\b",
    re.IGNORECASE)


def detect_format(prompt: str, answer: str = "") -> FormatHit | None:
    """Which of multiple_choice / true_false / proof the question is, or None. Checked in the
    order: answer options, explicit true/false or yes/no wording, proof wording, then a yes/no
    reference answer.

    `answer` (the reference) sharpens weak cues: "Is 91 prime?" is a yes/no question when the
    reference is "No"; a lone option letter "(C)" marks a choice question.
    """
    text = unicodedata.normalize("NFKC", prompt) if not re.search(r"[\u2460-\u2468]", prompt) else prompt
    answer = str(answer or "")
    if (options := _options(text, answer)) is not None:
        return FormatHit("multiple_choice", options.strip())
    if m := _TRUE_FALSE_STRONG.search(text):
        return FormatHit("true_false", m.group(0))
    if m := _PROOF.search(text):
        return FormatHit("proof", m.group(0))
    binary = _BINARY_ANSWER.fullmatch(answer) is not None
    if binary and re.fullmatch(r"\s*(?:yes|no|true|false)\s*\.?\s*", answer, re.IGNORECASE):
        return FormatHit("true_false", f"answer {answer.strip()!r}")
    if binary and (m := _TRUE_FALSE_WEAK.search(text)):
        return FormatHit("true_false", m.group(0).strip())
    return None


# ---------------------------------------------------------------------------------------------
# The steps

def check_rows(rows: list[Row], settings: FormatSettings, counts: Counter[str]) -> None:
    """A row with no checkable reference is dropped (`no_answer`); a row that is not a problem
    is an error. Every row kept gets its `problem`; every row's images are read (`absolute_images`)."""
    for row in rows:
        where = row.where
        prompt = row.data.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            got = "missing field 'prompt'" if prompt is None else (
                f"field 'prompt' must be str, got {type(prompt).__name__}"
                if not isinstance(prompt, str) else "field 'prompt' is empty")
            raise OpenK1Error(f"{where}: {got}")
        if row.data.get("type", "math") not in PROBLEM_TYPES:
            raise OpenK1Error(f"{where}: field 'type' must be one of {', '.join(PROBLEM_TYPES)}, "
                              f"got {row.data.get('type')!r}")
        detail = unusable_answer(row.data, settings.max_answer_chars)
        if detail:
            drop(row, "no_answer", counts, reason_detail=detail)
        else:
            row.problem = to_problem(row.data, where)
        absolute_images(row)


def absolute_images(row: Row) -> None:
    """A row's `images` read and checked (a bad one names the file, row and image, also on a row
    dropped for its answer) and written back as absolute paths or data URIs: curated.jsonl and
    dropped.jsonl lie in the run directory, not beside the data file the paths were relative to."""
    if row.data.get("images") is None:
        return
    refs = row.problem.images if row.problem is not None else resolve_images(
        row.data["images"], data_dir(row.where), row.where)
    row.data["images"] = [ref.source for ref in refs]


def format_filter(rows: list[Row], counts: Counter[str]) -> None:
    """Drop multiple-choice, true/false and proof questions (the reason is the kind)."""
    for row in alive(rows):
        assert row.problem is not None
        hit = detect_format(row.problem.prompt, row.problem.answer)
        if hit is not None:
            drop(row, hit.kind, counts, reason_detail=hit.evidence)
