"""Continuous batching and continuation: exact, and independent of slots and batch size."""

import functools

import pytest
import torch

from openk1.models import lean as lean_module
from openk1.models.forward import response_logprobs, tokenize
from openk1.rollout.engine import Request
from openk1.rollout.hf import HFEngine, SamplingConfig
from openk1.rollout.repeat import RepeatConfig

PROMPTS = ["12+3=", "7+845=", "1+1=", "99+1=", "3+4="]


LEAN = {"on": True}


@pytest.fixture(autouse=True, params=[True, False], ids=["lean", "hf"])
def decoder_kind(request):
    """Every test runs on both decode states: the lean static cache and HF's DynamicCache."""
    LEAN["on"] = request.param


def engine(tiny, **sampling):
    model, tokenizer = tiny
    return HFEngine(model, tokenizer, SamplingConfig(**{"max_new_tokens": 24, "lean": LEAN["on"], **sampling}))


def count_forwards(model, monkeypatch):
    """Record the input shape [b, n] of every forward pass (HF's, or the lean decoder's prefill
    [n, width] and step [b, 1])."""
    calls = []
    original = model.forward

    @functools.wraps(original)
    def counting(*args, **kwargs):
        calls.append(tuple(kwargs["input_ids"].shape))
        return original(*args, **kwargs)

    model.forward = counting
    extend, step = lean_module.Decoder.extend, lean_module.Decoder.step

    def counting_extend(self, contexts, pad_id):
        calls.append((len(contexts), max(len(c) for c in contexts)))
        return extend(self, contexts, pad_id)

    def counting_step(self, tokens):
        calls.append((tokens.shape[0], 1))
        return step(self, tokens)

    monkeypatch.setattr(lean_module.Decoder, "extend", counting_extend)
    monkeypatch.setattr(lean_module.Decoder, "step", counting_step)
    return calls


def test_slots_and_batch_size_do_not_change_the_samples(tiny):
    reference = engine(tiny, batch_size=256).generate(PROMPTS, 4, seed=5)
    lengths = reference.lengths.tolist()
    assert len(set(lengths)) > 3                   # uneven: EOS comes early in some rows
    for batch_size, continuous in [(3, True), (3, False), (7, True)]:
        other = engine(tiny, batch_size=batch_size, continuous_batching=continuous).generate(PROMPTS, 4, seed=5)
        assert torch.equal(other.response_ids, reference.response_ids)
        assert other.stop_reason == reference.stop_reason
        # other batch shapes, same decoder: log-probs up to ~5 within ~20 ulps (measured <= 1 ulp)
        assert torch.allclose(other.logp, reference.logp, atol=1e-5)


def test_continuous_logp_equals_fresh_forward(tiny):
    model, _ = tiny
    rollout = engine(tiny, batch_size=4).generate(PROMPTS, 3, seed=1)
    fresh = response_logprobs(model, rollout.prompt_ids, rollout.prompt_mask,
                              rollout.response_ids, rollout.action_mask)
    mask = rollout.action_mask.bool()
    # decode vs one forward: ~200 ulps of log-probs up to ~5 (measured <= 9.5e-7)
    assert torch.allclose(rollout.logp[mask], fresh[mask].detach(), atol=1e-4)


def test_refill_fills_freed_slots(tiny, monkeypatch):
    """Budgets 12, 2, 2, 2, 12, 2, 2, 2 on 4 slots (greedy: this model never says EOS).

    Static: two waves of 12 steps = 2 prefills + 2 x 11 decode passes.
    Continuous: the three 2-token rows finish after step 1; rows 4-6 are prefilled at step 2,
    rows 5-6 finish after step 3, row 7 joins at step 4; row 4 (started at step 2) ends the
    run at step 13: prefills of 4, 3 and 1 rows and decode passes after steps 0..12 = 13.
    """
    model, tokenizer = tiny
    ids = tuple(tokenize(tokenizer, ["1+1="])[0])
    requests = [Request(ids, (0, i), budget=b) for i, b in enumerate([12, 2, 2, 2, 12, 2, 2, 2])]
    calls = count_forwards(model, monkeypatch)
    static = engine(tiny, temperature=0.0, batch_size=4, continuous_batching=False).sample(requests)
    assert static.stop_reason == ["budget"] * 8
    assert [c for c in calls if c[1] > 1] == [(4, 5), (4, 5)] and sum(c[1] == 1 for c in calls) == 22
    calls.clear()
    continuous = engine(tiny, temperature=0.0, batch_size=4).sample(requests)
    assert [c[0] for c in calls if c[1] > 1] == [4, 3, 1] and sum(c[1] == 1 for c in calls) == 13
    assert [c[0] for c in calls if c[1] == 1][:4] == [4, 1, 4, 2]
    assert torch.equal(continuous.response_ids, static.response_ids)


def test_budget_cut_then_continuation_equals_one_go(tiny):
    _, tokenizer = tiny
    ids = [tuple(p) for p in tokenize(tokenizer, PROMPTS)]
    eng = engine(tiny, batch_size=2)
    one_go = eng.sample([Request(ids[i], (9, i)) for i in range(5)])
    cut = eng.sample([Request(ids[i], (9, i), budget=5) for i in range(5)])
    for row in range(5):
        n = int(one_go.lengths[row])
        head = cut.response_ids[row, :int(cut.lengths[row])].tolist()
        assert head == one_go.response_ids[row, :len(head)].tolist()
        assert cut.stop_reason[row] == ("budget" if n > 5 else one_go.stop_reason[row])
    rest = eng.sample([Request(ids[i], (9, i), prefix=tuple(cut.response_ids[i, :5].tolist()), budget=100)
                       for i in range(5) if cut.stop_reason[i] == "budget"])
    for j, row in enumerate(i for i in range(5) if cut.stop_reason[i] == "budget"):
        n = int(one_go.lengths[row])
        assert rest.response_ids[j, :n - 5].tolist() == one_go.response_ids[row, 5:n].tolist()
        assert torch.allclose(rest.logp[j, :n - 5], one_go.logp[row, 5:n], atol=1e-4)   # as above
        assert rest.stop_reason[j] == one_go.stop_reason[row]   # max_tokens counts the prefix


def test_stop_reasons_budget_versus_max_tokens(tiny):
    _, tokenizer = tiny
    ids = tuple(tokenize(tokenizer, ["1+1="])[0])
    eng = engine(tiny, temperature=0.0, max_new_tokens=6)
    greedy = eng.sample([Request(ids, (0, 0))])
    assert greedy.stop_reason == ["max_tokens"] and int(greedy.lengths[0]) == 6   # no EOS greedily
    prefix = tuple(greedy.response_ids[0, :4].tolist())
    both = eng.sample([Request(ids, (0, 0), prefix=prefix, budget=2),    # budget meets the max
                       Request(ids, (0, 0), prefix=prefix[:1], budget=2)])
    assert both.stop_reason == ["max_tokens", "budget"]
    assert both.lengths.tolist() == [2, 2]


def test_repeat_detector_sees_the_prefix(tiny):
    """A loop that starts in the prefix is stopped after the same token as in one go."""
    _, tokenizer = tiny
    ids = [tuple(p) for p in tokenize(tokenizer, PROMPTS)]
    repeat = RepeatConfig(enabled=True, max_period=8, min_repeats=3, min_tokens=6)
    eng = engine(tiny, temperature=0.0, max_new_tokens=48, repeat=repeat)
    one_go = eng.sample([Request(p, (0, i)) for i, p in enumerate(ids)])
    looped = [row for row, stop in enumerate(one_go.stop_reason) if stop == "repeat"]
    assert looped and all(int(one_go.lengths[row]) >= 6 for row in looped)   # min_tokens 6
    for row in looped:
        n = int(one_go.lengths[row])
        prefix = tuple(one_go.response_ids[row, :n - 2].tolist())
        rest = eng.sample([Request(ids[row], (0, row), prefix=prefix)])
        assert rest.stop_reason == ["repeat"] and int(rest.lengths[0]) == 2
