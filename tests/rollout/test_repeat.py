import random

import pytest
import torch

from openk1.data.synthetic import long_response
from openk1.rollout.repeat import (
    RepeatConfig,
    RepeatDetector,
    first_repeat,
    is_repetitive,
    required_runs,
)

SMALL = {"max_period": 4, "min_repeats": 4, "min_tokens": 12}


def naive_first_repeat(x, max_period, min_repeats, min_tokens):
    """The rule read literally: after token t, are the last L_p tokens periodic with period p?"""
    for t in range(len(x)):
        for p in range(1, max_period + 1):
            length = max(min_repeats * p, min_tokens)
            if length <= t + 1 and all(x[j] == x[j - p] for j in range(t + 1 - length + p, t + 1)):
                return t
    return None


def loopy_sequence(rng, vocab, length):
    """Random blocks of 1..5 tokens, each written 1..3 times: some rows loop, some do not."""
    x = []
    while len(x) < length:
        x += [rng.randrange(vocab) for _ in range(rng.randint(1, 5))] * rng.randint(1, 3)
    return x[:length]


def detector_first(rows, **params):
    """Feed equal-length rows token by token; the step at which each row first fired."""
    detector = RepeatDetector(len(rows), **params)
    first = [None] * len(rows)
    for t, column in enumerate(zip(*rows)):
        for b in detector.update(torch.tensor(column)).nonzero().flatten().tolist():
            assert first[b] is None          # fires once per row
            first[b] = t
    return first


def test_required_runs_hand_computed():
    # max(4p, 12) - p for p = 1..4: 12 - 1, 12 - 2, 12 - 3, 16 - 4
    assert required_runs(**SMALL).tolist() == [11, 10, 9, 12]


def test_repeated_block_fires_on_the_token_that_completes_it():
    # "12+" (p = 3) four times = 12 tokens: fires on the last "+", index 11 (2 more with "ab")
    assert first_repeat(list(b"12+12+12+12+"), **SMALL) == 11
    assert first_repeat(list(b"ab12+12+12+12+"), **SMALL) == 13
    assert first_repeat(list(b"12+12+12+12"), **SMALL) is None      # one token short
    assert first_repeat(list(b"12+12+12-12+"), **SMALL) is None     # broken copy
    assert detector_first([list(b"12+12+12+12+")], **SMALL) == [11]


def test_defaults_need_five_copies_and_32_tokens():
    # p = 3: L = max(5 * 3, 32) = 32 tokens; p = 1: L = 32; p = 20: L = 100
    assert first_repeat(list(b"12+" * 11)) == 31
    assert not is_repetitive(list(b"12+" * 10))                     # 30 tokens
    assert first_repeat(list(b"x" + b"0" * 32)) == 32
    assert not is_repetitive(list(b"1" + b"0" * 31))
    block = list(range(100, 120))
    assert first_repeat(block * 5) == 99 and not is_repetitive(block * 4 + block[:19])


@pytest.mark.parametrize("a, b", [(7, 6), (1111, 1111), (9999, 9999), (5555, 4444), (1000, 1000),
                                  (4821, 377), (99, 9)])
def test_arithmetic_chain_of_thought_does_not_fire_at_the_defaults(a, b):
    # 1111 + 1111 writes "1+1=2 c0\n" four times back to back: 4 copies < min_repeats 5
    text = long_response(a, b, random.Random(0), slip_rate=0.0)
    ids = list(text.encode())
    assert not is_repetitive(ids)
    assert detector_first([ids]) == [None]
    assert not is_repetitive(list(b"7+6=13 c1\n0+5+1=6 c0"))


def test_four_identical_lines_would_fire_with_four_repeats():
    ids = list(long_response(1111, 1111, random.Random(0), slip_rate=0.0).encode())
    assert is_repetitive(ids, min_repeats=4)


@pytest.mark.parametrize("vocab, params", [
    (4, {"max_period": 5, "min_repeats": 3, "min_tokens": 10}),
    (3, {"max_period": 6, "min_repeats": 3, "min_tokens": 12}),
    (2, {"max_period": 3, "min_repeats": 2, "min_tokens": 8}),
    (2, SMALL),
])
def test_incremental_equals_whole_sequence_equals_literal_rule(vocab, params):
    rng = random.Random(vocab * 100 + params["max_period"])
    rows = [loopy_sequence(rng, vocab, 40) for _ in range(300)]
    literal = [naive_first_repeat(x, **params) for x in rows]
    assert [first_repeat(x, **params) for x in rows] == literal
    assert detector_first(rows, **params) == literal
    assert 50 < sum(f is not None for f in literal) < 250     # both outcomes are exercised


def test_rows_are_independent():
    rng = random.Random(0)
    rows = [loopy_sequence(rng, 3, 40) for _ in range(8)]
    together = detector_first(rows, **SMALL)
    assert together == [detector_first([r], **SMALL)[0] for r in rows]
    changed = [[5] * 40] + rows[1:]                              # row 0 fires at 11 now
    assert detector_first(changed, **SMALL) == [11] + together[1:]


def test_inactive_rows_keep_their_state_and_never_fire():
    tokens = list(b"12+12+12+12+")
    detector = RepeatDetector(2, **SMALL)
    fired = []
    for t, tok in enumerate(tokens):
        if t == 6:       # 20 pad steps with row 0 paused: nothing fires, nothing is recorded
            for _ in range(20):
                out = detector.update(torch.tensor([0, 0]), active=torch.tensor([False, True]))
                fired.append(out.tolist())
        fired.append(detector.update(torch.tensor([tok, 7]),
                                     active=torch.tensor([True, False])).tolist())
    # row 0 fires on its 12th real token exactly as without the pause; row 1 fired on pads only
    assert [i for i, f in enumerate(fired) if f[0]] == [len(fired) - 1]
    assert [i for i, f in enumerate(fired) if f[1]] == [6 + 11]   # 12th pad: max(12, 1*4) tokens
    assert detector.fired.tolist() == [True, True]


def test_config_builds_a_detector():
    detector = RepeatDetector.from_config(RepeatConfig(enabled=True, **SMALL), batch_size=3)
    assert detector.history.shape == (3, 4) and detector.needed.tolist() == [11, 10, 9, 12]


def test_docstring_examples():
    import doctest

    from openk1.rollout import repeat

    result = doctest.testmod(repeat)
    assert result.attempted >= 5 and result.failed == 0
