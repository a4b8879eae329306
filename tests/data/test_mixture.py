"""Mixture: exact proportions, buffered shuffle, over-long rows counted."""

import random

from openk1.data.io import write_jsonl
from openk1.data.mixture import Mixture, PackedStream, choose_source, shuffled
from openk1.data.packing import Example


def test_choose_source_by_hand():
    counts, picks = [0, 0], []
    for _ in range(5):
        i = choose_source(counts, [0.4, 0.6])
        counts[i] += 1
        picks.append(i)
    # deficits: (.4,.6)->1; (.8,.2)->0; (.2,.8)->1; (.6,.4)->0; (0,1)->1
    assert picks == [1, 0, 1, 0, 1] and counts == [2, 3]


def test_mixture_proportions_exact():
    weights = [0.4, 0.6, 1.0]                  # shares 0.2, 0.3, 0.5
    counts = [0, 0, 0]
    for n in range(1, 201):
        counts[choose_source(counts, weights)] += 1
        for c, w in zip(counts, weights):
            assert abs(c - n * w / 2.0) <= 1.0
    assert counts == [40, 60, 100]


def encode(row):
    n = row["n"]
    return Example(list(range(1, n + 1)), [0] + [1] * (n - 1))


def test_stream_counts_overlong_and_cycles(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"n": n} for n in (3, 9, 2, 4)])
    stream = PackedStream(str(tmp_path / "a.jsonl"), encode, 5, True, "drop", 0, 0)
    assert [[len(e.ids) for e in stream.next()] for _ in range(3)] == [[3, 2], [4], [3, 2]]
    assert stream.passes == 1 and stream.counts["dropped"] == 2 and stream.counts["ok"] == 6
    assert stream.rows_per_pass() == 2
    trunc = PackedStream(str(tmp_path / "a.jsonl"), encode, 5, False, "truncate", 0, 0)
    assert [len(trunc.next()[0].ids) for _ in range(4)] == [3, 5, 2, 4] and trunc.counts["truncated"] == 1


def test_mixture_take_and_skip_replay(tmp_path):
    write_jsonl(tmp_path / "long.jsonl", [{"n": 4}] * 3)
    write_jsonl(tmp_path / "short.jsonl", [{"n": 2}] * 7)

    def make():
        streams = [PackedStream(str(tmp_path / f), encode, 4, False, "drop", 1, 100)
                   for f in ("long.jsonl", "short.jsonl")]
        return Mixture(streams, [0.4, 0.6], ["long", "short"])

    full = [(i, [e.ids for e in row]) for i, row in make().take(10)]
    assert [i for i, _ in full].count(0) == 4 and [i for i, _ in full].count(1) == 6
    resumed = make()
    resumed.skip(6)
    assert [(i, [e.ids for e in row]) for i, row in resumed.take(4)] == full[6:]


def test_shuffled_is_a_permutation():
    rows = [{"i": i} for i in range(50)]
    for buffer in (1, 7, 100):
        out = list(shuffled(iter(rows), buffer, random.Random(0)))
        assert sorted(r["i"] for r in out) == list(range(50))
    assert [r["i"] for r in shuffled(iter(rows), 100, random.Random(0))] != list(range(50))
