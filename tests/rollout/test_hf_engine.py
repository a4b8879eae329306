import pytest
import torch

from openk1.models.forward import response_logprobs
from openk1.rollout.hf import HFEngine, SamplingConfig, sample_tokens
from openk1.rollout.streams import counter_uniform

PROMPTS = ["12+3=", "7+845=", "1+1="]   # different lengths: exercises left padding


def test_rollout_logp_equals_fresh_forward(tiny):
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, SamplingConfig(temperature=1.0, max_new_tokens=24))
    rollout = engine.generate(PROMPTS, samples_per_prompt=3, seed=0)
    assert rollout.response_ids.shape[0] == 9
    fresh = response_logprobs(model, rollout.prompt_ids, rollout.prompt_mask,
                              rollout.response_ids, rollout.action_mask)
    mask = rollout.action_mask.bool()
    assert mask.sum() > 20
    # decode (cached, one token a step) vs one forward: fp32 log-probs up to ~5 (ulp 4.8e-7);
    # 1e-4 is ~200 ulps (measured <= 9.5e-7 with AMX / AVX2 / default kernels)
    assert torch.allclose(rollout.logp[mask], fresh[mask].detach(), atol=1e-4)
    assert (rollout.logp[~mask] == 0).all()


def test_each_row_matches_an_unpadded_single_run(tiny):
    """Batched (padded) log-probs equal those of each sequence scored alone, without padding."""
    model, tokenizer = tiny
    rollout = HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=16)).generate(PROMPTS, 1, seed=3)
    for row in range(3):
        p_mask = rollout.prompt_mask[row].bool()
        a_mask = rollout.action_mask[row].bool()
        alone = response_logprobs(model, rollout.prompt_ids[row][p_mask][None], p_mask[p_mask][None].long(),
                                  rollout.response_ids[row][a_mask][None], a_mask[a_mask][None].long())
        assert torch.allclose(alone[0].detach(), rollout.logp[row][a_mask], atol=1e-4)   # as above


def test_deterministic_under_seed_and_seed_matters(tiny):
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=12))
    a = engine.generate(PROMPTS, 2, seed=7)
    b = engine.generate(PROMPTS, 2, seed=7)
    c = engine.generate(PROMPTS, 2, seed=8)
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    assert not torch.equal(a.response_ids, c.response_ids)


def test_stop_reasons_and_mask(tiny):
    model, tokenizer = tiny
    rollout = HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=5)).generate(PROMPTS, 4, seed=0)
    for row, reason in enumerate(rollout.stop_reason):
        n = int(rollout.action_mask[row].sum())
        last = int(rollout.response_ids[row, n - 1])
        if reason == "normal":
            assert last == tokenizer.eos_token_id
        else:
            assert reason == "max_tokens" and n == 5 and last != tokenizer.eos_token_id
        # the mask is a prefix of ones
        assert rollout.action_mask[row, :n].all() and not rollout.action_mask[row, n:].any()


def test_greedy_takes_the_argmax():
    logits = torch.full((4, 10), -5.0)
    logits[:, 2] = 5.0
    assert sample_tokens(logits, 0.0, 1.0, torch.rand(4)).tolist() == [2, 2, 2, 2]


def test_inverse_cdf_picks_by_cumulative_probability():
    # probs 0.5, 0.3, 0.2 -> CDF 0.5, 0.8, 1.0: u < 0.5 -> 0, 0.5 <= u < 0.8 -> 1, else 2
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).repeat(6, 1)
    u = torch.tensor([0.0, 0.49, 0.51, 0.79, 0.81, 0.999999])
    assert sample_tokens(logits, 1.0, 1.0, u).tolist() == [0, 0, 1, 1, 2, 2]
    # top_p 0.6 keeps 0.5 and 0.3 (mass 0.8): token 1 from u >= 0.5 / 0.8 = 0.625
    assert sample_tokens(logits, 1.0, 0.6, u).tolist() == [0, 0, 0, 1, 1, 1]


def test_top_p_keeps_only_the_nucleus():
    # probs 0.5, 0.3, 0.2 -> top_p 0.6 keeps tokens 0 and 1 (0.5 < 0.6, 0.8 >= 0.6)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).repeat(2000, 1)
    u = counter_uniform(torch.zeros(2000, dtype=torch.long), torch.arange(2000), torch.zeros(2000, dtype=torch.long))
    tokens = sample_tokens(logits, 1.0, 0.6, u)
    assert set(tokens.tolist()) == {0, 1}
    share = (tokens == 0).float().mean().item()
    assert abs(share - 0.5 / 0.8) < 0.04        # renormalised: 0.625
    assert sample_tokens(logits[:1], 1.0, 0.4, u[:1]).item() == 0   # only the top token


def test_repeat_detection_stops_generation(tiny):
    """Greedy decoding of the random tiny model loops; the detector stops those rows."""
    from openk1.rollout.repeat import RepeatConfig, is_repetitive

    model, tokenizer = tiny
    repeat = RepeatConfig(enabled=True, max_period=8, min_repeats=3, min_tokens=6)
    plain = HFEngine(model, tokenizer, SamplingConfig(temperature=0.0, max_new_tokens=48))
    stopped = HFEngine(model, tokenizer, SamplingConfig(temperature=0.0, max_new_tokens=48, repeat=repeat))
    a, b = plain.generate(PROMPTS, 1, seed=0), stopped.generate(PROMPTS, 1, seed=0)
    looping = [is_repetitive(row[m.bool()].tolist(), max_period=8, min_repeats=3, min_tokens=6)
               for row, m in zip(a.response_ids, a.action_mask)]
    assert any(looping)
    for row, loops in enumerate(looping):
        n = int(b.action_mask[row].sum())
        if loops:
            assert b.stop_reason[row] == "repeat" and n < int(a.action_mask[row].sum())
            assert torch.equal(b.response_ids[row, :n], a.response_ids[row, :n])
        else:
            assert b.stop_reason[row] == a.stop_reason[row]


# The rollout's log-probs against the trainer's (a fresh forward pass, same tokens): the same fp32
# arithmetic (log softmax(z / T), algo/logprobs.py) on logits from two forward passes that differ
# only in summation order (a cached token a step vs one pass over the sequence). |logp| is about
# log V = 4.6 here (up to ~5.3 at T = 0.7), where fp32's ulp is 4.8e-7 (eps 1.2e-7 x 4); errors of
# ~eps relative random-walk over a few hundred accumulated ops (hidden 32, ~30 attended positions,
# a logsumexp over V = 101): sqrt(300) x 1.2e-7 x 5 ~ 1e-5. Measured: <= 4.8e-7 (one ulp).
LOGP_ATOL = 1e-5


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_logp_is_the_tempered_distributions(tiny, temperature):
    """log pi_theta_i recorded by the rollout = log softmax(z / T) of the token sampled, what
    response_logprobs(..., temperature=T) computes on the lean and on HF's forward."""
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, SamplingConfig(temperature=temperature, max_new_tokens=24))
    rollout = engine.generate(PROMPTS, samples_per_prompt=3, seed=0)
    args = (model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.action_mask)
    mask = rollout.action_mask.bool()
    assert mask.sum() > 20
    for lean in (True, False):
        fresh = response_logprobs(*args, lean=lean, temperature=temperature).detach()
        torch.testing.assert_close(rollout.logp[mask], fresh[mask], atol=LOGP_ATOL, rtol=0)
    assert (rollout.logp[~mask] == 0).all()
    untempered = response_logprobs(*args).detach()              # T = 1: the old stored log-probs
    gap = (rollout.logp[mask] - untempered[mask]).abs().mean()
    if temperature == 1.0:
        assert gap < LOGP_ATOL
    else:   # measured 0.043 (max 0.28): far beyond rounding, so the test tells the two apart
        assert gap > 100 * LOGP_ATOL
