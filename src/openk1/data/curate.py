r"""Model-free curation filters for the RL prompt set (report §2.1): pure functions.

- `unusable_answer`: a row needs a reference the verifier can check (a non-empty, non-placeholder
  answer of at most `max_chars` characters; tests for code rows).
- `detect_format`: multiple-choice, true/false and proof questions, which a rule-based verifier
  cannot judge fairly (a guess is right 1 time in 2-5; a proof has no single answer).
- `normalize_tokens` / `MinHasher` / `NearDupIndex`: exact and near-duplicate detection. MinHash
  over token 3-gram shingles with LSH banding proposes candidate pairs; the exact Jaccard of the
  two shingle sets decides, and (by default) the two prompts must hold the same numbers, so that
  "5 red balls" and "6 red balls" stay two problems.
- `keyword_tags`: domain + discipline tags from keywords, for rows that carry none.
- `balance_counts` / `balance_mask`: downsample domains to target proportions.

    >>> detect_format("True or false: every prime is odd.").kind
    'true_false'
    >>> detect_format("Show your work and compute 17 * 23.") is None
    True
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

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
# Deduplication

_TOKEN_RE = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+|[^\w\s]")
_LATEX_NOISE_RE = re.compile(r"\\(?:left|right|displaystyle|textstyle|limits)(?![a-zA-Z])|\\[,;:! ]")
_IGNORED_TOKENS = frozenset({"$", "{", "}", ".", ",", ";", ":", "?", "!", '"', "'", "`", "~"})
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")


def normalize_tokens(text: str) -> list[str]:
    """Lower-cased word/number/symbol tokens without spacing, `$`, braces and punctuation.

    >>> normalize_tokens("Compute $2^{10} + 3.5$.")
    ['compute', '2', '^', '10', '+', '3.5']
    """
    text = _LATEX_NOISE_RE.sub(" ", unicodedata.normalize("NFKC", text).lower())
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return [t for t in _TOKEN_RE.findall(text) if t not in _IGNORED_TOKENS]


def normalize_text(text: str) -> str:
    """The exact-duplicate key: `normalize_tokens` joined by single spaces."""
    return " ".join(normalize_tokens(text))


def shingles(tokens: list[str], size: int) -> set[str]:
    """Token n-grams of `size` (a shorter text is one shingle)."""
    if len(tokens) <= size:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(tokens[i:i + size]) for i in range(len(tokens) - size + 1)}


def numbers_of(tokens: list[str]) -> tuple[str, ...]:
    return tuple(sorted(t for t in tokens if _NUMBER_RE.fullmatch(t)))


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


_MERSENNE = (1 << 31) - 1   # hashes live in [0, 2^31): a * x + b stays below 2^63 in uint64


class MinHasher:
    """MinHash signatures: num_perm universal hashes h(x) = (a x + b) mod p over stable
    64-bit shingle digests; a, b drawn from random.Random(seed), so signatures are reproducible."""

    def __init__(self, num_perm: int = 128, seed: int = 0) -> None:
        rng = random.Random(f"minhash-{seed}")
        self.a = np.array([rng.randrange(1, _MERSENNE) for _ in range(num_perm)], dtype=np.uint64)
        self.b = np.array([rng.randrange(0, _MERSENNE) for _ in range(num_perm)], dtype=np.uint64)

    def signature(self, items: Iterable[str]) -> np.ndarray:
        """[num_perm] uint64 minima (all 2^31 - 1 for an empty set)."""
        digests = [int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")
                   % _MERSENNE for s in items]
        if not digests:
            return np.full(self.a.shape, _MERSENNE, dtype=np.uint64)
        x = np.array(digests, dtype=np.uint64)
        signature: np.ndarray = ((self.a[:, None] * x[None, :] + self.b[:, None]) % _MERSENNE).min(axis=1)
        return signature


@dataclass
class _Entry:
    key: Any
    shingles: set[str]
    numbers: tuple[str, ...]


class NearDupIndex:
    """LSH over MinHash signatures: `bands` bands of num_perm / bands rows; two texts sharing
    one band are candidates, and a candidate matches when its exact shingle Jaccard reaches
    `threshold` (and its numbers are the same, with `same_numbers`)."""

    def __init__(self, threshold: float = 0.7, shingle_tokens: int = 3, num_perm: int = 128,
                 bands: int = 32, seed: int = 0, same_numbers: bool = True) -> None:
        if num_perm % bands:
            raise ValueError(f"num_perm ({num_perm}) must be a multiple of bands ({bands})")
        self.threshold, self.size, self.same_numbers = threshold, shingle_tokens, same_numbers
        self.hasher, self.bands, self.rows = MinHasher(num_perm, seed), bands, num_perm // bands
        self.buckets: dict[tuple[int, bytes], list[int]] = {}
        self.entries: list[_Entry] = []

    def _prepare(self, text: str) -> tuple[set[str], tuple[str, ...], list[tuple[int, bytes]]]:
        tokens = normalize_tokens(text)
        grams = shingles(tokens, self.size)
        sig = self.hasher.signature(grams)
        bands = [(b, sig[b * self.rows:(b + 1) * self.rows].tobytes()) for b in range(self.bands)]
        return grams, numbers_of(tokens), bands

    def query(self, text: str) -> tuple[Any, float] | None:
        """(key, Jaccard) of the earliest added text that `text` nearly duplicates, else None."""
        return self._query(*self._prepare(text))

    def _query(self, grams: set[str], numbers: tuple[str, ...],
               bands: list[tuple[int, bytes]]) -> tuple[Any, float] | None:
        candidates = sorted({i for band in bands for i in self.buckets.get(band, ())})
        for i in candidates:
            entry = self.entries[i]
            if self.same_numbers and entry.numbers != numbers:
                continue
            score = jaccard(grams, entry.shingles)
            if score >= self.threshold:
                return entry.key, score
        return None

    def add(self, key: Any, text: str) -> None:
        grams, numbers, bands = self._prepare(text)
        self._add(key, grams, numbers, bands)

    def _add(self, key: Any, grams: set[str], numbers: tuple[str, ...],
             bands: list[tuple[int, bytes]]) -> None:
        self.entries.append(_Entry(key, grams, numbers))
        for band in bands:
            self.buckets.setdefault(band, []).append(len(self.entries) - 1)

    def add_unless_duplicate(self, key: Any, text: str) -> tuple[Any, float] | None:
        """Query, then add `text` only if it matched nothing (kept texts form the index)."""
        prepared = self._prepare(text)
        hit = self._query(*prepared)
        if hit is None:
            self._add(key, *prepared)
        return hit


# ---------------------------------------------------------------------------------------------
# Domain tagging

def _words(*words: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(words) + r")\b", re.IGNORECASE)


# domain -> keyword pattern; a row's domain is the one with the most distinct keyword hits
DOMAIN_KEYWORDS: dict[str, re.Pattern[str]] = {
    "code": _words(
        "python", "java", "javascript", "c\\+\\+", "rust", "golang", "sql", "program", "code",
        "implement", "algorithm", "array", "stdin", "stdout", "input format", "output format",
        "time limit", "test cases?", "return the", "write a function", "linked list",
        "compile", "subarray", "substring", "queries"),
    "physics": _words(
        "velocity", "acceleration", "force", "momentum", "newtons?", "joules?", "watts?", "kinetic",
        "potential energy", "friction", "gravity", "gravitational", "circuit", "voltage",
        "resistors?", "magnetic", "electric", "wavelength", "photons?", "pendulum", "projectile",
        "m/s", "spring constant", "torque"),
    "chemistry": _words(
        "moles?", "molar", "molarity", "chemical", "reaction rate", "acids?", "ph", "atoms?",
        "molecules?", "oxidation", "isotopes?", "ions?", "stoichiometry", "equilibrium constant",
        "enthalpy", "catalyst", "electrons?"),
    "biology": _words(
        "genes?", "dna", "rna", "proteins?", "enzymes?", "species", "organisms?", "evolution",
        "alleles?", "genotypes?", "phenotypes?", "chromosomes?", "mitosis", "meiosis", "bacteria",
        "ecosystem", "photosynthesis", "cell (?:division|membrane|wall)"),
    "math": _words(
        "equation", "integers?", "primes?", "triangle", "polygon", "circle", "radius", "probability",
        "sum", "product", "derivative", "integral", "polynomial", "matrix", "real numbers?",
        "digits?", "remainder", "divisible", "sequence", "series", "function", "roots?", "solve",
        "evaluate", "compute", "calculate", "simplify", "how many", "area", "perimeter", "angle",
        "fraction", "ratio", "percent", "average", "mean", "median", "log", "sqrt", "frac",
        "sin", "cos", "tan", "gcd", "lcm", "modulo", "mod", "factorial", "expected value"),
}
# discipline tags for math rows
MATH_AREAS: dict[str, re.Pattern[str]] = {
    "algebra": _words("equation", "polynomial", "roots?", "solve for", "inequality", "quadratic",
                      "linear", "system of", "variables?", "expression", "simplify", "factor"),
    "geometry": _words("triangle", "circle", "polygon", "angle", "area", "perimeter", "radius",
                       "square", "rectangle", "parallel", "perpendicular", "volume", "sphere",
                       "coordinates?", "tangent"),
    "number_theory": _words("primes?", "divisible", "remainder", "gcd", "lcm", "modulo", "mod",
                            "integers?", "digits?", "divisors?", "factors", "congruent"),
    "counting_probability": _words("probability", "how many ways", "arrangements?", "choose",
                                   "combinations?", "permutations?", "expected value", "random",
                                   "dice", "coins?", "cards?"),
    "calculus": _words("derivative", "integral", "limit", "differentiate", "integrate",
                       "maximum", "minimum", "series", "converge"),
}
_ARITHMETIC_RE = re.compile(r"\s*[\d\s+\-*/×÷().^=]*\d[\d\s+\-*/×÷().^=]*\??\s*")


def keyword_tags(prompt: str, problem_type: str = "math") -> tuple[str, list[str]]:
    """(domain, tags) from keywords; a code row is `code`; no keyword at all gives `general`.

    >>> keyword_tags("12+34=")
    ('math', ['arithmetic'])
    >>> keyword_tags("A ball is thrown with velocity 3 m/s; find the kinetic energy.")[0]
    'physics'
    """
    if problem_type == "code":
        return "code", ["code"]
    if _ARITHMETIC_RE.fullmatch(prompt):
        return "math", ["arithmetic"]
    hits = {d: len({m.group(0).lower() for m in p.finditer(prompt)}) for d, p in DOMAIN_KEYWORDS.items()}
    # science and code words are rarer and more telling than math's general vocabulary
    score = {d: n * (1.0 if d == "math" else 1.5) for d, n in hits.items()}
    domain = max(score, key=lambda d: score[d])
    if score[domain] == 0:
        return ("math", ["arithmetic"]) if re.search(r"\d\s*[-+*/^]\s*\d", prompt) else ("general", ["general"])
    if domain != "math":
        return domain, [domain]
    areas = {a: len({m.group(0).lower() for m in p.finditer(prompt)}) for a, p in MATH_AREAS.items()}
    tags = [a for a, n in sorted(areas.items(), key=lambda kv: -kv[1]) if n > 0]
    return "math", tags or ["math"]


# ---------------------------------------------------------------------------------------------
# Balancing

def balance_counts(available: dict[str, int], targets: dict[str, float]) -> dict[str, int]:
    """Rows to keep per domain: the largest set with the target proportions that the available
    rows allow (downsampling only). Domains without a target keep 0 rows; a targeted domain
    with no rows at all is left out and the other targets renormalised.

    N = min over targeted domains d of available_d / t_d;  keep_d = floor(t_d * N)

    >>> balance_counts({"math": 60, "code": 10, "general": 30}, {"math": 0.5, "code": 0.25, "general": 0.25})
    {'math': 20, 'code': 10, 'general': 10}
    """
    present = {d: t for d, t in targets.items() if t > 0 and available.get(d, 0) > 0}
    total = sum(present.values())
    shares = {d: t / total for d, t in present.items()}
    if not shares:
        return {d: 0 for d in available}
    n = min(available.get(d, 0) / s for d, s in shares.items())
    return {d: int(shares[d] * n + 1e-9) if d in shares else 0 for d in available}


def balance_mask(domains: list[str], targets: dict[str, float], seed: int) -> list[bool]:
    """Which rows to keep so the domain mix follows `targets`; the rows kept within a domain
    are a seeded random sample (input order is preserved by the caller)."""
    by_domain: dict[str, list[int]] = {}
    for i, d in enumerate(domains):
        by_domain.setdefault(d, []).append(i)
    counts = balance_counts({d: len(ix) for d, ix in by_domain.items()}, targets)
    keep = [False] * len(domains)
    for d, ix in sorted(by_domain.items()):
        for i in random.Random(f"{seed}-balance-{d}").sample(ix, counts[d]):
            keep[i] = True
    return keep
