"""Streams of packed rows from dataset files, and a weighted mixture of them.

A `PackedStream` reads its file lazily (JSONL / Parquet / HF dataset on disk, via `iter_located`),
shuffles through a bounded buffer (seeded per pass), reads each row's images (`with_images`),
encodes rows as `Example`s, applies the over-long rule (counted, never silent) and packs them; at
the end of a pass it starts the next.
A `Mixture` interleaves streams deterministically so that after n rows source i has given
round(n * w_i / sum w) rows, within one. Resume = build the same objects and skip the rows
already consumed (`skip`), which replays the counters too.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from openk1.data.packing import Example, OverlongRule, fit_length, pack, with_images
from openk1.data.sources import DataSource, iter_source
from openk1.errors import OpenK1Error

Encoder = Callable[[dict[str, Any]], Example]
T = TypeVar("T")


def shuffled(rows: Iterator[T], buffer: int, rng: random.Random) -> Iterator[T]:
    """Buffered shuffle: a full permutation when the file fits in `buffer` rows."""
    pool: list[T] = []
    for row in rows:
        pool.append(row)
        if len(pool) >= buffer:
            i = rng.randrange(len(pool))
            pool[i], pool[-1] = pool[-1], pool[i]
            yield pool.pop()
    rng.shuffle(pool)
    yield from pool


class PackedStream:
    """Endless packed rows (lists of Examples) from one dataset file."""

    def __init__(self, path: str | DataSource, encode: Encoder, max_len: int, pack_rows: bool,
                 rule: OverlongRule, seed: int, shuffle_buffer: int, salt: str = "") -> None:
        self.path, self.encode, self.max_len, self.pack_rows = path, encode, max_len, pack_rows
        self.rule, self.seed, self.shuffle_buffer, self.salt = rule, seed, shuffle_buffer, salt
        self.counts: Counter[str] = Counter()       # examples: ok / truncated / dropped / split
        self.passes = 0
        self._rows = self._forever()

    def one_pass(self, index: int, chunk: int = 1024) -> Iterator[list[Example]]:
        """Packed rows of pass `index`, packed `chunk` examples at a time. The shuffle is seeded by
        (seed, salt, pass), never by the path, so a run is reproducible in any folder."""
        rng = random.Random(f"{self.seed}{self.salt}-{index}")
        located = iter_source(self.path, "sft")   # (where, row): an error names the row's line
        rows = shuffled(located, self.shuffle_buffer, rng) if self.shuffle_buffer else located
        pending: list[Example] = []
        for where, row in rows:
            row = with_images(row, where)             # its images read and checked (errors name the row)
            try:
                kept, status = fit_length(self.encode(row), self.max_len, self.rule)
            except OpenK1Error as exc:
                raise OpenK1Error(f"{where}: {exc}") from None
            self.counts[status] += 1
            pending += kept
            if len(pending) >= chunk:
                yield from self._group(pending)
                pending = []
        yield from self._group(pending)

    def _group(self, examples: list[Example]) -> list[list[Example]]:
        return pack(examples, self.max_len) if self.pack_rows else [[e] for e in examples]

    def _forever(self) -> Iterator[list[Example]]:
        while True:
            produced = 0
            for row in self.one_pass(self.passes):
                produced += 1
                yield row
            if not produced:
                raise OpenK1Error(f"{self.path}: no usable rows (all dropped as over-long?)")
            self.passes += 1

    def next(self) -> list[Example]:
        return next(self._rows)

    def rows_per_pass(self) -> int:
        """Packed rows in one pass (a separate read of the file; counters untouched)."""
        probe = PackedStream(self.path, self.encode, self.max_len, self.pack_rows, self.rule,
                             self.seed, self.shuffle_buffer, self.salt)
        return sum(1 for _ in probe.one_pass(0))


def choose_source(counts: list[int], weights: list[float]) -> int:
    """The source furthest behind its share: argmax_i (n + 1) * w_i / W - counts_i (first on ties).

    >>> choose_source([0, 0], [0.4, 0.6]), choose_source([0, 1], [0.4, 0.6])
    (1, 0)
    """
    n, total = sum(counts), sum(weights)
    deficits = [(n + 1) * w / total - c for w, c in zip(weights, counts)]
    return max(range(len(counts)), key=lambda i: (deficits[i], -i))


class Mixture:
    """Weighted, deterministic interleaving of packed-row streams."""

    def __init__(self, streams: list[PackedStream], weights: list[float], names: list[str]) -> None:
        if not streams or len(streams) != len(weights) or min(weights) <= 0:
            raise OpenK1Error("a mixture needs at least one source, each with a positive weight")
        self.streams, self.weights, self.names = streams, weights, names
        self.taken = [0] * len(streams)               # packed rows drawn from each source

    def take(self, n: int) -> list[tuple[int, list[Example]]]:
        """The next n packed rows, each with the index of its source."""
        out = []
        for _ in range(n):
            i = choose_source(self.taken, self.weights)
            self.taken[i] += 1
            out.append((i, self.streams[i].next()))
        return out

    def skip(self, n: int) -> None:
        self.take(n)

    def counters(self) -> dict[str, int]:
        """Cumulative example counts by over-long outcome, summed over sources."""
        total: Counter[str] = Counter()
        for stream in self.streams:
            total.update(stream.counts)
        return {k: total.get(k, 0) for k in ("ok", "truncated", "dropped", "split")}


def source_name(path: str, name: str) -> str:
    return name or Path(path).stem
