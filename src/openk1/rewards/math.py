r"""Rule-based math verifier: extract the final answer, refuse reward hacks, compare to the reference.

The report (§2.3.5) scores math with a chain-of-thought reward model; openk1 starts from this
deterministic verifier, cheap enough for the thousands of calls an RL iteration makes, and uses
the very same function for evaluation.

Rules (docs/rewards.md repeats them):
- Extraction: the last top-level `\boxed{}` / `\fbox{}` (nested braces handled,
  `\boxed{\boxed{x}}` -> `x`); boxes separated only by commas, "or", "and" or spacing are read
  together as one list ("\boxed{3} or \boxed{4}" -> "3, 4"). A "Final answer: ..." line written
  AFTER the last box overrides it (the Minerva format "Final Answer: The final answer is $X$.").
  Without a box, the last "Answer:" / "The answer is" / "Final answer:" line (case-insensitive)
  is read up to the end of its sentence, without quotes around it (`\"$5$\"`, `"5"`, `“5”`).
  An answer that only appears in the reasoning is no answer.
- Several parts: when the reference holds several parts (a list, "a and b", `\pm`), and always
  for a reference's own boxes, boxes separated by a little text are read together, as Math-Verify
  does: a gap under 10 characters, or under 70 holding "and", "or", "," or ";" between boxes of
  different content ("\boxed{(3,3)} for part (a) and \boxed{(1,1)}" -> "(3,3), (1,1)"); an
  identical box repeated nearby counts once. Otherwise the last box (or list of boxes) alone counts.
- Rejections (reward 0), each judged against the reference so that a reference of the same kind
  still matches: several candidates when the reference is a single value ("3 or 4", "3, 4",
  `3 \pm 1`, "3 4"); vacuous answers (a bare variable, "any real number", `\mathbb{R}`); an empty
  box; an answer longer than max(200, 4 * len(reference)) characters, or holding a value too big
  to evaluate (a factorial of a 5+ digit number, a 7+ digit exponent, a numeric power tower), unless
  the reference holds one too.
- `x = 3` is read as `3` (and `a \approx b` as `b`) unless the reference is itself a relation;
  a chain between different numbers (`4 = 3`, `3 \approx 4`) counts as several candidates.
- Commas in numbers: "1,234" is a thousands separator (a 1-9 first group of 1-3 digits, then
  groups of 3, as in Math-Verify; "0,111" is not one); any other comma separates list items
  ("-2,1" are two roots). One exception, Math-Verify's plain-number rule: when the reference is a
  single plain number, a response number with one comma between digits and no space ("1000,99",
  "2,74", `1{,}5`, "0,111") reads as a decimal comma; "1, 2" (a space) stays a list. A
  reference's comma is left to Math-Verify, which reads it as a list ("-2.1" does not match the
  roots "-2,1"), except a thousands-shaped one after a lone 0 ("0,111" = 0.111; "0,5" is a list).
- Fast path: when both sides are plain numbers (integers, "1,234", decimals, a/b, `\frac{a}{b}`,
  `1.5 \times 10^{3}`, with `$`, `^\circ`, `%` decorations) they are compared exactly with
  Fraction, so 0.33 != 1/3. A percentage p% also matches p and p/100.
- Otherwise math-verify decides (its signal-based timeouts are on in the main thread only), then
  a sympy fallback for plain-text answers math-verify cannot parse (`2*x**2`). Exceptions and
  timeouts give the verdict "error" and reward 0.
"""

from __future__ import annotations

import functools
import re
import threading
from fractions import Fraction
from typing import Any

from math_verify import parse, verify
from math_verify.errors import TimeoutException
from math_verify.utils import timeout
from sympy import Symbol
from sympy.parsing.sympy_parser import (
    convert_xor,
    implicit_multiplication_application,
    parse_expr,
    standard_transformations,
)

from openk1.rewards.base import Score
from openk1.types import Problem

TIMEOUT_S = 5  # math-verify's budget per parse/compare (main thread only: it uses SIGALRM)
MIN_MAX_ANSWER_CHARS = 200  # an answer longer than max(200, 4 * len(reference)) is refused
ANSWER_LENGTH_FACTOR = 4

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LEADING_BOX_RE = re.compile(r"\s*\\(?:boxed|fbox)\s*\{")
_BRACE_RE = re.compile(r"\\[\\{}]|[{}]")
_BOX_GAP_RE = re.compile(
    r"(?:[\s$,;.&]|\\[()\[\]]|\\q?quad|\bor\b|\band\b|\\text\{\s*(?:or|and|,)?\s*\})*",
    re.IGNORECASE,
)
_PART_SEPARATOR_RE = re.compile(r"\b(?:and|or)\b|[,;]")  # Math-Verify's separators between boxes
_NEAR_GAP, _FAR_GAP = 10, 70  # Math-Verify: boxes under 10 characters apart, or under 70 with a separator
_QUOTED_RE = re.compile(r'(?:\\?"|\u201c)\s*([^"\u201c\u201d]*?)\s*(?:\\?"|\u201d)')
_ANSWER_RE = re.compile(r"(?:final\s+answer|answer)\**\s*(?:is\b|:)", re.IGNORECASE)
_FINAL_ANSWER_RE = re.compile(r"final\s+answer\**\s*(?:is\b|:)", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)|,\s+(?!or\b|and\b)(?=[a-z]{2,})|\s+(?:because|since)\b")
_MATH_DELIM_RE = re.compile(r"(?<!\\)\$|\\[()\[\]]")
_HAS_MATH_RE = re.compile(r"\\boxed|\\fbox|(?<!\\)\$|\\\(|\\\[")
_DOUBLE_BACKSLASH_RE = re.compile(r"\\\\(?=[a-zA-Z])")  # JSON-escaped LaTeX: \\frac -> \frac
_THOUSANDS_COMMA_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")

_NUMBER_NOISE_RE = re.compile(r"\\!\s*|\\[,;:]|\\?\$|\^\s*\{?\\circ\}?|°|\\displaystyle")
_SCI_RE = re.compile(r"\s*(?:\\times|\\cdot|\*)\s*10\s*\^\s*\{?\s*([-+]?\d{1,3})\s*\}?$")
_FRAC_RE = re.compile(r"([-+]?)\\[dt]?frac\{\s*([-+]?[\d.]+)\s*\}\{\s*([-+]?[\d.]+)\s*\}")
_THOUSANDS_RE = re.compile(r"[-+]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?|[-+]?[1-9]\d{0,2}(?: \d{3})+")
_DIGIT_COMMA_RE = re.compile(r"(?<=\d)(?:\{,\}|,)(?=\d)")  # a comma between digits, "1,5" / "1{,}5"
_DECIMAL_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d{1,3})?", re.IGNORECASE)
_SLASH_RE = re.compile(r"([-+]?\d+)\s*/\s*(\d+)")

_NOT_LETTER = r"(?![a-zA-Z])"
_MULTI_RE = re.compile(
    rf"\bor\b|\band\b|\\(?:lor|vee|pm|mp|q?quad){_NOT_LETTER}|\d\s+\d", re.IGNORECASE
)
_VACUOUS_RE = re.compile(
    r"\(?[a-z](?:_\w)?\)?|\\(?:alpha|beta|gamma|theta|lambda|mu|phi|varphi|omega)"
    r"|(?:any|all|every)(?:real)?(?:numbers?|reals?|values?|x)|anything"
    r"|(?:[a-z]\\in)?\\mathbbr|\(-\\infty,\+?\\infty\)"
)
_VACUOUS_NOISE_RE = re.compile(r"\\(?:text|mathrm|textbf|mbox)|[{}\s$]|\\[,;!]|\.$")
# 99999!, 2^{10000000}, 10^{10^{10}}, 2**3**4: numbers sympy may never finish evaluating
_HUGE_VALUE_RE = re.compile(r"\d{5,}\s*!|(?:\^|\*\*)\s*[{(]?\s*(?:\d{7,}|\d+\s*(?:\^|\*\*))")
_INEQUALITY_RE = re.compile(rf"<|>|\\(?:[lg]eq?|neq?|in|sim){_NOT_LETTER}")
_FINAL_VALUE_RE = re.compile(rf"=|\\approx{_NOT_LETTER}")
_PLAIN_EXPR_RE = re.compile(
    r"(?:[\d+\-*/^() ]|\.(?=\d)|(?:sqrt|pi|exp|log|sin|cos|tan)(?![a-zA-Z])"
    r"|(?<![a-zA-Z])[a-zA-Z](?![a-zA-Z]))+"
)
_SYMPY_TRANSFORMS = standard_transformations + (implicit_multiplication_application, convert_xor)


def extract_answer(response: str, several_parts: bool = False) -> str | None:
    r"""The final answer of a response: last `\boxed{}`, else last answer line, else None.

    `several_parts` (the reference has several): boxes a little text apart are read together.

    >>> extract_answer("First \\boxed{1}, then \\boxed{\\frac{a}{b+\\{c\\}}}.")
    '\\frac{a}{b+\\{c\\}}'
    >>> extract_answer("So x = 2. The answer is 2."), extract_answer("We get 2.")
    ('2', None)
    >>> extract_answer("\\boxed{3} for (a) and \\boxed{1} for (b)", several_parts=True)
    '3, 1'
    """
    box = _last_boxes(response, several_parts)
    marker = _FINAL_ANSWER_RE if box is not None else _ANSWER_RE
    line = _last_answer_line(response, marker, box[0] if box is not None else 0)
    if line is not None:
        return line
    return box[1] if box is not None else None


def _brace_pairs(text: str, start: int) -> dict[int, int]:
    r"""{index of `{`: index of its `}`} from `start` on; `\{`, `\}` and `\\` are not braces.

    One pass over the braces only (not every character), so even a degenerate response with
    thousands of unclosed boxes costs linear time.
    """
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE_RE.finditer(text, start):
        if m[0] == "{":
            stack.append(m.start())
        elif m[0] == "}" and stack:
            pairs[stack.pop()] = m.start()
    return pairs


def _boxes(text: str) -> tuple[list[tuple[int, int, int]], dict[int, int]]:
    """Top-level closed boxes as (start, `{` index, `}` index), and the brace pairs.

    Boxes nested in an earlier box, and unclosed boxes, are skipped.
    """
    first = _BOX_RE.search(text)
    if first is None:
        return [], {}
    pairs = _brace_pairs(text, first.start())
    found: list[tuple[int, int, int]] = []
    for m in _BOX_RE.finditer(text, first.start()):
        close = pairs.get(m.end() - 1)
        if close is not None and not (found and m.start() < found[-1][2]):
            found.append((m.start(), m.end() - 1, close))
    return found, pairs


def _unbox(text: str, begin: int, end: int, pairs: dict[int, int]) -> str:
    r"""text[begin:end] without the boxes that wrap all of it (`\boxed{\boxed{x}}` -> `x`)."""
    while m := _LEADING_BOX_RE.match(text, begin, end):
        close = pairs.get(m.end() - 1)
        if close is None or text[close + 1 : end].strip():
            break
        begin, end = m.end(), close
    return text[begin:end].strip()


def _last_boxes(text: str, loose: bool = False) -> tuple[int, str] | None:
    """(end, content) of the last box; boxes joined only by separators are read as one list.

    `loose`: boxes a little text apart are joined too, as Math-Verify joins them (module doc).
    """
    boxes, pairs = _boxes(text) if "box" in text else ([], {})
    if not boxes:
        return None
    contents = [_unbox(text, boxes[-1][1] + 1, boxes[-1][2], pairs)]
    start = boxes[-1][0]
    for prev in reversed(boxes[:-1]):
        content = _unbox(text, prev[1] + 1, prev[2], pairs)
        if not _boxes_joined(text[prev[2] + 1 : start], content, contents[-1], loose):
            break
        if not (loose and content == contents[-1]):  # Math-Verify counts a repeated box once
            contents.append(content)
        start = prev[0]
    return boxes[-1][2] + 1, ", ".join(c for c in reversed(contents) if c)


def _boxes_joined(gap: str, content: str, next_content: str, loose: bool) -> bool:
    """Whether two boxes with `gap` between them belong to one answer (the rules: module doc)."""
    if _BOX_GAP_RE.fullmatch(gap):
        return True
    if not loose:
        return False
    if len(gap) < _NEAR_GAP:
        return True
    return len(gap) < _FAR_GAP and content != next_content and bool(_PART_SEPARATOR_RE.search(gap))


def _last_answer_line(text: str, marker: re.Pattern[str], start: int) -> str | None:
    """What follows the last answer marker at or after `start`, up to the end of its sentence."""
    last = None
    for match in marker.finditer(text, start):
        last = match
    if last is None:
        return None
    rest = text[last.end() :].lstrip(" \t\n*:")
    head = ""
    if rest.startswith(("$$", "\\[")):  # display math may span lines
        closer = rest.find("$$" if rest.startswith("$$") else "\\]", 2)
        if closer > 0:
            head, rest = rest[: closer + 2], rest[closer + 2 :]
    line = _SENTENCE_END_RE.split(head + rest.split("\n", 1)[0], maxsplit=1)[0]
    content = _unquote(_MATH_DELIM_RE.sub("", line).strip().rstrip(".*, ").strip())
    if _BOX_RE.search(content):  # an unclosed box: a truncated answer
        return None
    return content or None


def _unquote(text: str) -> str:
    r"""`\"5\"`, `"5"` or `“5”` -> `5`: quotes around a whole answer are not part of it."""
    m = _QUOTED_RE.fullmatch(text)
    return m[1] if m and m[1] else text


def verify_math(response: str, problem: Problem) -> Score:
    r"""Reward 1.0 iff the response's final answer equals `problem.answer` (rules: module doc).

    `details` holds `extracted` (the answer read from the response) and `path`, the comparison
    that decided: "fast" (exact numbers), "math_verify" or "sympy".

    >>> p = Problem(prompt="What is 6 * 7?", answer="42")
    >>> verify_math("6 * 7 = 42, so the answer is $\\boxed{42}$.", p)
    Score(reward=1.0, verdict='correct', details={'extracted': '42', 'path': 'fast'})
    >>> verify_math("It is 42 or 43: \\boxed{42 \\text{ or } 43}", p).verdict
    'rejected_multiple'
    """
    ref = _reference_text(problem.answer)
    answer = extract_answer(response, several_parts=_is_multiple(ref))
    details: dict[str, Any] = {"extracted": answer}
    if answer is None:
        return Score(0.0, "no_answer", details)
    try:
        verdict = _judge(answer, problem.answer, ref, details)
    except (Exception, TimeoutException) as exc:  # noqa: BLE001 - a verifier never crashes RL
        # (math-verify's TimeoutException is a BaseException, hence listed)
        return Score(0.0, "error", {**details, "error": repr(exc)})
    return Score(1.0 if verdict == "correct" else 0.0, verdict, details)


def _judge(answer: str, reference: str, ref: str, details: dict[str, Any]) -> str:
    """The verdict for an extracted answer against `reference` (`ref`: its bare answer text).

    Records the deciding path in `details`.
    """
    answer = _decimal_comma(_normalise(answer), ref)
    rejection = _rejection(answer, ref, len(reference))
    if rejection is not None:
        return rejection
    answer = _final_value(answer, ref)
    same = _numbers_equal(answer, ref)
    details["path"] = "fast"
    if same is None:
        details["path"] = "math_verify"
        same = _symbolic_equal(answer, _gold_text(reference, ref), details)
    return "correct" if same else "wrong"


def _normalise(text: str) -> str:
    r"""JSON-escaped LaTeX (`\\frac` -> `\frac`) and the Unicode minus sign."""
    return _DOUBLE_BACKSLASH_RE.sub(r"\\", text).replace("\u2212", "-")


def _reference_text(reference: str) -> str:
    """The reference as a bare answer: its box content if it has one, math delimiters removed."""
    ref = _normalise(reference)
    if _BOX_RE.search(ref):
        ref = extract_answer(ref, several_parts=True) or ref
    return _MATH_DELIM_RE.sub("", ref).strip().rstrip(".").strip()


def _gold_text(reference: str, ref: str) -> str:
    r"""The reference for math-verify: as written, or, with a closed box, `ref` as read here.

    Its boxes are then read by the same rules as the response's: math-verify's own reading of
    `$x = \boxed{2}$ if $a = 1$, and $x = \boxed{5}$ otherwise` keeps only `5`.
    """
    gold = _normalise(reference)
    return f"\\boxed{{{ref}}}" if _last_boxes(gold) is not None else gold


def _rejection(answer: str, ref: str, ref_len: int) -> str | None:
    """A "rejected_*" verdict for an empty, oversized, vacuous or multi-candidate answer."""
    if not _VACUOUS_NOISE_RE.sub("", answer):
        return "rejected_empty"
    if len(answer) > max(MIN_MAX_ANSWER_CHARS, ANSWER_LENGTH_FACTOR * ref_len):
        return "rejected_oversized"
    if _HUGE_VALUE_RE.search(answer) and not _HUGE_VALUE_RE.search(ref):
        return "rejected_oversized"  # sympy would never finish (no timeout outside the main thread)
    if _to_number(answer) is not None:  # a plain number is one definite value
        return None
    if _is_vacuous(answer) and not _is_vacuous(ref):
        return "rejected_vacuous"
    if _is_multiple(answer) and not _is_multiple(ref) and "," not in _no_thousands(ref):
        return "rejected_multiple"
    if _claims_several_values(answer) and not _FINAL_VALUE_RE.search(ref):
        return "rejected_multiple"
    return None


def _decimal_comma(answer: str, ref: str) -> str:
    """The answer with its decimal comma read as a point ("1000,99" -> "1000.99"), else unchanged.

    Only when the reference is one plain number and the answer one number with a single comma
    between digits that is no thousands separator (Math-Verify's plain-number rule).
    """
    if len(_DIGIT_COMMA_RE.findall(answer)) != 1 or _to_number(ref) is None or _to_number(answer) is not None:
        return answer
    decimal = _DIGIT_COMMA_RE.sub(".", answer)
    return decimal if _to_number(decimal) is not None else answer


def _no_thousands(text: str) -> str:
    """Drop thousands separators ("1,234" -> "1234") so they do not read as lists."""
    return _THOUSANDS_COMMA_RE.sub("", text)


def _is_vacuous(text: str) -> bool:
    """A bare variable or an "any real number" style answer."""
    return bool(_VACUOUS_RE.fullmatch(_VACUOUS_NOISE_RE.sub("", text).lower()))


def _is_multiple(text: str) -> bool:
    r"""Several candidates: "or", "and", `\pm`, "3 4", or a comma/semicolon outside brackets."""
    text = _no_thousands(text)
    if _MULTI_RE.search(text):
        return True
    depth = 0
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch in ",;" and depth == 0:
            return True
    return False


def _claims_several_values(answer: str) -> bool:
    r"""`4 = 3` or `3 \approx 4`: a chain of `=` / `\approx` between different plain numbers."""
    numbers = (_to_number(part) for part in _FINAL_VALUE_RE.split(answer))
    return len({n[0] for n in numbers if n is not None}) > 1


def _final_value(answer: str, ref: str) -> str:
    r"""`x = 3` -> `3` and `a \approx b` -> `b`, unless either side is a relation/inequality."""
    if _FINAL_VALUE_RE.search(ref) or _INEQUALITY_RE.search(ref) or _INEQUALITY_RE.search(answer):
        return answer
    last = _FINAL_VALUE_RE.split(answer)[-1].strip()
    return last or answer


def _to_number(text: str) -> tuple[Fraction, bool] | None:
    """(value, is_percent) when `text` is a plain number, else None. Microseconds, no sympy."""
    s = _NUMBER_NOISE_RE.sub("", text.replace("{,}", ",")).strip()
    percent = s.endswith("%")
    if percent:
        s = s[:-1].rstrip("\\").strip()
    if m := _FRAC_RE.fullmatch(s):
        num, den = _to_number(m[2]), _to_number(m[3])
        if num is None or den is None or den[0] == 0:
            return None
        return (-1 if m[1] == "-" else 1) * num[0] / den[0], percent
    if m := _SLASH_RE.fullmatch(s):
        return (Fraction(int(m[1]), int(m[2])), percent) if int(m[2]) else None
    s = _SCI_RE.sub(lambda e: "e" + e[1], s)
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "").replace(" ", "")
    return (Fraction(s), percent) if _DECIMAL_RE.fullmatch(s) else None


def _numbers_equal(answer: str, ref: str) -> bool | None:
    """Exact comparison when both sides are plain numbers; None when either is not."""
    a, b = _to_number(answer), _to_number(ref)
    if a is None or b is None:
        return None
    if a[1] == b[1]:
        return a[0] == b[0]
    percent, plain = (a[0], b[0]) if a[1] else (b[0], a[0])
    return plain in (percent, percent / 100)


def _timeout_s() -> int | None:
    """math-verify's signal-based timeouts work only in the main thread; elsewhere: none."""
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=4096)
def _parse_reference(reference: str, timeout_s: int | None) -> tuple[Any, ...]:
    """math-verify's parse of a reference, cached (RL scores k samples of each prompt)."""
    wrapped = reference if _HAS_MATH_RE.search(reference) else f"${reference}$"
    return tuple(parse(wrapped, parsing_timeout=timeout_s, raise_on_error=True))


def _symbolic_equal(answer: str, reference: str, details: dict[str, Any]) -> bool:
    """math-verify on the boxed answer; sympy for plain-text answers math-verify cannot parse."""
    t = _timeout_s()
    gold = list(_parse_reference(reference, t))
    pred = parse("\\boxed{" + answer + "}", parsing_timeout=t, raise_on_error=True)
    if verify(gold, pred, allow_set_relation_comp=True, timeout_seconds=t, raise_on_error=True):
        return True
    parsed = any(not isinstance(p, str) for p in pred)
    if parsed or not _PLAIN_EXPR_RE.fullmatch(answer):
        return False
    details["path"] = "sympy"
    try:  # the whitelist above leaves no names to call but sqrt/exp/log/trig and 1-letter symbols
        expr = timeout(t)(parse_expr)(answer, transformations=_SYMPY_TRANSFORMS, evaluate=False)
    except Exception:  # noqa: BLE001 - any syntax sympy rejects is simply not equal
        return False
    real = {x: Symbol(x.name, real=True) for x in expr.free_symbols}  # as math-verify's symbols
    expr = expr.xreplace(real)
    return bool(verify(gold, [expr], timeout_seconds=t, raise_on_error=True))
