"""Duplicate filter, `curate.dedup` (report §2.1): exact and near-duplicate prompts, and
decontamination against evaluation sets.

MinHash over token 3-gram shingles with LSH banding proposes candidate pairs; the exact Jaccard
of the two shingle sets decides, and (by default) the two prompts must hold the same numbers, so
that "5 red balls" and "6 red balls" stay two problems. A problem with images duplicates only a
problem with the same images (their digests, in order): "<image> How many shapes?" over another
image is another problem. The same rule holds for decontamination.

    >>> normalize_text("Compute $2^{10}$.") == normalize_text("compute 2^{10}")
    True
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from openk1.config import Section
from openk1.curate.rows import Row, alive, drop
from openk1.data.io import iter_located
from openk1.errors import OpenK1Error


class DedupSettings(Section):
    exact: bool = Field(True, description="drop prompts equal to an earlier one after normalisation")
    near: bool = Field(True, description="drop near duplicates (MinHash + LSH proposes, the exact Jaccard decides)")
    threshold: float = Field(0.7, gt=0.0, le=1.0, description="Jaccard of token 3-gram shingles for a near duplicate")
    shingle_tokens: int = Field(3, gt=0, description="tokens per shingle")
    num_perm: int = Field(128, gt=0, description="MinHash permutations = bands x rows per band")
    bands: int = Field(32, gt=0, description="LSH bands")
    same_numbers: bool = Field(True, description="near duplicates must hold the same numbers")
    decontaminate: list[str] = Field(
        default_factory=list,
        description="evaluation sets (JSONL / Parquet / HF dataset folder) whose prompts must not be trained on")

    @model_validator(mode="after")
    def _whole_bands(self) -> DedupSettings:
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm ({self.num_perm}) must be a multiple of bands ({self.bands})")
        return self


# ---------------------------------------------------------------------------------------------
# Normalisation, shingles, MinHash + LSH

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
# The step

Images = tuple[str, ...]   # a prompt's image digests, in order (() for a text prompt)


def eval_prompts(paths: list[str]) -> list[tuple[str, str, Images]]:
    """(where, prompt, image digests) of every row of the decontamination sets (images read as
    problem rows' are: data/io.py `to_problem`)."""
    from openk1.data.images import data_dir, place_images, resolve_images

    out = []
    for path in paths:
        for where, row in iter_located(path):
            prompt = row.get("prompt")
            if not isinstance(prompt, str):
                raise OpenK1Error(f"{where}: missing field 'prompt' (decontamination set)")
            images: Images = ()
            if row.get("images") is not None:
                images = tuple(ref.digest for ref in resolve_images(row["images"], data_dir(where), where))
                prompt = place_images(prompt, len(images), where)
            out.append((where, prompt, images))
    return out


def dedup(rows: list[Row], settings: DedupSettings, seed: int, counts: Counter[str]) -> None:
    """Contamination first (a prompt of an eval set is contaminated even when repeated), then
    exact duplicates, then near duplicates of an earlier kept row; only between prompts with the
    same images (one near-duplicate index per image tuple)."""
    def index() -> NearDupIndex:
        return NearDupIndex(settings.threshold, settings.shingle_tokens, settings.num_perm,
                            settings.bands, seed, settings.same_numbers)

    evals: dict[Images, NearDupIndex] = {}
    within: dict[Images, NearDupIndex] = {}
    eval_exact: dict[tuple[str, Images], str] = {}
    for where, prompt, images in eval_prompts(settings.decontaminate):
        eval_exact.setdefault((normalize_text(prompt), images), where)
        if settings.near:
            evals.setdefault(images, index()).add(where, prompt)
    seen: dict[tuple[str, Images], str] = {}
    for row in alive(rows):
        assert row.problem is not None
        images = tuple(ref.digest for ref in row.problem.images)
        prompt, key = row.problem.prompt, (normalize_text(row.problem.prompt), images)
        if key in eval_exact:
            drop(row, "contaminated", counts, reason_detail=f"same prompt as {eval_exact[key]}")
        elif settings.near and images in evals and (hit := evals[images].query(prompt)):
            drop(row, "contaminated", counts,
                 reason_detail=f"near duplicate of {hit[0]} (Jaccard {hit[1]:.2f})")
        elif settings.exact and key in seen:
            drop(row, "duplicate", counts, duplicate_of=seen[key])
        elif settings.near and (hit := within.setdefault(images, index()).add_unless_duplicate(row.name, prompt)):
            drop(row, "near_duplicate", counts, duplicate_of=hit[0],
                 reason_detail=f"Jaccard {hit[1]:.2f}")
        else:
            seen.setdefault(key, row.name)
