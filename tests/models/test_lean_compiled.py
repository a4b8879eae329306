"""models/lean_compiled.py: the compiled decode step samples the tokens the eager step samples,
with log-probs equal to rounding; it compiles once (CPU: dynamic shapes) or once per bucket (CUDA's
static shapes, checked here on the CPU with dynamo's eager backend); off unless asked for."""

import functools

import pytest
import torch
from torch._dynamo.utils import counters

from openk1.models import lean_compiled
from openk1.models.lean import Decoder, LeanModel
from openk1.models.lean_compiled import CompiledDecoder, bucket
from openk1.models.tiny import TinyModelConfig, char_tokenizer, tiny_llama
from openk1.rollout.engine import requests_for
from openk1.rollout.hf import HFEngine, SamplingConfig, sample_tokens
from openk1.stages.rl import RLConfig, rollout_engine

PROMPTS = ["12+3=", "7+845=", "1+1="]   # different lengths: rows of different widths

# Both paths evaluate the same fp32 expression in another order (fused elementwise loops,
# attention reductions): each op rounds to fp32 (eps 1.2e-7) either way, so logits differ by a
# few eps relative (|z| < ~4 here) and logp = z_t - logsumexp(z) by at most about twice that,
# plus its own rounding: a few ulps of |logp| <= 6 (ulp 4.8e-7). Measured: <= 1.43e-6 (3 ulps)
# over 95k tokens (3 models, T 1 / 0.7 / 0, 10 seeds), 9.5e-7 on the demo's size. 1e-5 is ~20
# ulps, 7x the measured worst (and test_hf_engine's LOGP_ATOL, decode vs fresh forward).
LOGP_ATOL = 1e-5


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tokenizer = char_tokenizer()   # grouped-query attention: 4 query heads on 2 kv heads
    model = tiny_llama(TinyModelConfig(hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64), tokenizer, seed=0)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)    # peaked distributions: differences would show
    return model.eval(), tokenizer


def graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_compiled_rollout_equals_eager(model_and_tokenizer, temperature):
    model, tokenizer = model_and_tokenizer
    sampling = SamplingConfig(temperature=temperature, max_new_tokens=24)
    eager = HFEngine(model, tokenizer, sampling).generate(PROMPTS, 3, seed=0)
    engine = HFEngine(model, tokenizer, sampling, compile=True)
    fast = engine.generate(PROMPTS, 3, seed=0)
    assert "compiled decode step (dynamic rows and width)" in engine.forward_path
    # the same tokens: a token differs only where a uniform falls within rounding of a CDF step
    assert torch.equal(fast.response_ids, eager.response_ids) and fast.stop_reason == eager.stop_reason
    mask = eager.action_mask.bool()
    assert torch.equal(fast.action_mask, eager.action_mask) and mask.sum() > 50
    torch.testing.assert_close(fast.logp[mask], eager.logp[mask], atol=LOGP_ATOL, rtol=0)
    if temperature == 0.7:   # the tempered distribution's log-prob, not T = 1's (far beyond rounding)
        untempered = HFEngine(model, tokenizer, sampling.model_copy(update={"temperature": 0.0}))
        assert (fast.logp[mask] - untempered.generate(PROMPTS, 3, seed=0).logp[mask]).abs().max() > 0.01


def test_another_batch_reuses_the_graphs(model_and_tokenizer):
    """Other rows, widths, cache slots and length: no new graph (CPU: dynamic dimensions)."""
    model, tokenizer = model_and_tokenizer
    engine = HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=16), compile=True)
    engine.generate(PROMPTS, 2, seed=1)                     # 6 rows; compiles unless an earlier test did
    before = graphs()
    other = HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=70), compile=True)
    rollout = other.generate(PROMPTS + ["5+5=", "123+4="], 4, seed=2)    # 20 rows, cache 32 x 128
    assert rollout.action_mask.sum(1).max() > 40           # rows of many widths
    assert graphs() == before


def test_buckets_compile_once_per_bucket(model_and_tokenizer, monkeypatch):
    """CUDA's static shapes (buckets=True), on the CPU through dynamo's eager backend (the same
    guards and recompilations, no code generation): one graph per row bucket, and padding rows
    change nothing for the real ones (checked against the eager decoder)."""
    model, _ = model_and_tokenizer
    monkeypatch.setattr(lean_compiled, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    lean = LeanModel(model)
    fast, slow = CompiledDecoder(lean, 16, 40, temperature=1.0, buckets=True), Decoder(lean, 16, 40)
    assert (fast.k.shape[1], fast.length) == (16, 64)       # cache: powers of two
    assert [fast.rows_bucket(n) for n in (1, 8, 9, 16)] == [8, 8, 16, 16]
    g = torch.Generator().manual_seed(0)
    contexts = [torch.randint(3, 100, (n,), generator=g).tolist() for n in range(3, 15)]   # 12 rows
    logits = slow.extend(contexts, 0)
    fast.extend(contexts, 0)
    token = logits.argmax(-1)
    counts = []
    for keep in [None, 10, 10, 6, 6]:                     # rows: 12, 10, 10 (bucket 16), 6, 6 (bucket 8)
        if keep is not None:
            rows = torch.arange(slow.rows) < keep
            order = slow.keep(rows)
            assert torch.equal(fast.keep(rows), order)
            token = token[order]
        uniforms = torch.rand(slow.rows, dtype=torch.float64, generator=g)
        got, logp = fast.step_sample(token, uniforms)
        z = slow.step(token)
        token = sample_tokens(z, 1.0, 1.0, uniforms)
        assert torch.equal(got, token)
        torch.testing.assert_close(logp, torch.log_softmax(z, -1).gather(-1, token[:, None])[:, 0],
                                   atol=LOGP_ATOL, rtol=0)
        counts.append(graphs())
    # new graphs (layer + head) at the first step and at the first step in bucket 8 only
    assert counts[1] == counts[2] == counts[0] and counts[3] == counts[4] == counts[0] + 2


def test_off_by_default_and_where_unsupported(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    assert RLConfig().rollout_compile is False
    before = dict(counters["frames"])
    HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=8)).generate(PROMPTS, 2, seed=0)
    assert dict(counters["frames"]) == before               # nothing traced, nothing compiled
    batch = requests_for(tokenizer, PROMPTS, 1, 0)
    off = HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=8))
    nucleus = HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=8, top_p=0.9), compile=True)
    assert type(off._state(batch)) is Decoder and type(nucleus._state(batch)) is Decoder
    on = HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=8), compile=True)
    assert isinstance(on._state(batch), CompiledDecoder)
    engine = rollout_engine(RLConfig(rollout_compile=True), model, tokenizer, "")
    assert engine.engine.compile is True                     # the RL stage passes the setting on


def test_bucket():
    assert [bucket(n, 8) for n in (0, 1, 8, 9, 33, 256, 257)] == [8, 8, 8, 16, 64, 256, 512]
    assert bucket(100, 64) == 128 and bucket(3, 1) == 4
