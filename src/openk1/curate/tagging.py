"""Tagging, `curate.tagging` (report §2.1, "diverse coverage"): a domain and discipline tags
for every row that carries none, so that `balance` can mix domains. Keywords by default, or
`method: model`: the domain whose name the model finds likeliest after the prompt (and its
images, for a vision-language model).

    >>> keyword_tags("12+34=")
    ('math', ['arithmetic'])
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import torch
from pydantic import Field, field_validator

from openk1.config import Section
from openk1.curate.rows import Row, alive
from openk1.data.images import ImageRef
from openk1.errors import OpenK1Error
from openk1.padding import pad


class TaggingSettings(Section):
    method: str = Field("keywords", description="keywords | model (the likeliest domain name after `template`)")
    domains: list[str] = Field(
        default_factory=lambda: ["math", "physics", "chemistry", "biology", "code", "general"],
        description="domains a row may be tagged with")
    template: str = Field("{prompt}\nDomain:",
                          description="method model: the text scored before each domain name; `{prompt}` is replaced")

    @field_validator("method")
    @classmethod
    def _known(cls, method: str) -> str:
        if method not in ("keywords", "model"):
            raise ValueError("must be keywords or model")
        return method


# ---------------------------------------------------------------------------------------------
# Keywords

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
# The model tagger, and the step

@torch.no_grad()
def model_domains(model: Any, tokenizer: Any, prompts: list[str], domains: list[str],
                  template: str, images: list[tuple[ImageRef, ...]] | None = None) -> list[str]:
    """Zero-shot tagger: the domain whose name the model finds likeliest after `template`
    (mean log-prob per token of " <domain>"). `images[i]`: prompts[i]'s, shown to a
    vision-language model (its `<image>` markers expanded, models/vlm.py `prompt_tokens`)."""
    from openk1.models.forward import eval_mode, response_logprobs
    from openk1.models.io import processor_of
    from openk1.models.vlm import prompt_tokens

    names = [tokenizer(" " + d, add_special_tokens=False)["input_ids"] for d in domains]
    response, mask = pad(names, tokenizer.pad_token_id)                       # [D, T]
    out = []
    with eval_mode(model):
        for i, prompt in enumerate(prompts):
            shown = images[i] if images else ()
            ids = prompt_tokens(tokenizer, template.replace("{prompt}", prompt), shown)
            prompt_ids, prompt_mask = pad([ids] * len(domains), tokenizer.pad_token_id, side="left")
            logp = response_logprobs(model, prompt_ids, prompt_mask, response, mask,   # [D, T]
                                     images=[shown] * len(domains) if shown else None,
                                     processor=processor_of(tokenizer))
            out.append(domains[int((logp.sum(-1) / mask.sum(-1)).argmax())])
    return out


def tag(rows: list[Row], settings: TaggingSettings, model: Any, tokenizer: Any) -> Counter[str]:
    """Fill a missing `domain` / `tags`; given ones are kept. Returns rows per tag source."""
    sources: Counter[str] = Counter()
    rows_left = alive(rows)
    need = [r for r in rows_left if not r.data.get("domain")]
    by_model: dict[int, str] = {}
    if settings.method == "model" and need:
        if model is None:
            raise OpenK1Error("tagging.method=model needs a model (--model)")
        problems = [r.problem for r in need if r.problem is not None]
        by_model = dict(zip([r.n for r in need], model_domains(
            model, tokenizer, [p.prompt for p in problems], settings.domains, settings.template,
            [p.images for p in problems])))
    for row in rows_left:
        assert row.problem is not None
        domain, tags = keyword_tags(row.problem.prompt, row.problem.type)
        if row.data.get("domain"):
            sources["given"] += 1
        else:
            row.data["domain"] = by_model.get(row.n, domain)
            sources[settings.method] += 1
        if not row.data.get("tags"):
            row.data["tags"] = tags if row.data["domain"] == domain else [row.data["domain"]]
    return sources

