"""Sampling consistency (issue 17.4): log pi_theta_i (the rollout's) and log pi_theta (the update's)
are those of the tempered distribution sampled, softmax(z / T); RL refuses top-p < 1."""

from __future__ import annotations

import pytest
import torch

from openk1.config import build, parse_overrides
from openk1.errors import OpenK1Error
from openk1.loop import Loop
from openk1.models.forward import response_logprobs
from openk1.rollout.hf import HFEngine, SamplingConfig
from openk1.rollout.vllm_engine import logprobs_mode_args
from openk1.stages import rl

# As tests/rollout/test_hf_engine.py LOGP_ATOL: rollout (cached decode) vs update (one forward)
# log-probs of magnitude ~log V = 4.6 (V = 101), fp32 ulp 4.8e-7 there, rounding that random-walks
# over a few hundred ops: sqrt(300) x 1.2e-7 x 5 ~ 1e-5 per token (measured <= 4.8e-7). A sequence's
# l_j sums up to MAX_NEW = 24 of them: 24 x 1e-5 bounds |l_j - l_old_j|.
LOGP_ATOL = 1e-5
MAX_NEW = 24
PROMPTS = ["12+3=", "7+845=", "1+1="]


def sequence_logprobs(model, rollout, temperature):
    """l_j [B]: a fresh forward's summed log-probs of each response at `temperature`."""
    return response_logprobs(model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                             rollout.action_mask, temperature=temperature).detach().sum(-1)


def test_first_step_log_ratio_is_zero_at_temperature_0_7(tiny):
    """Rollout and update both tempered: at theta = theta_i, l - l_old is rounding only; and the
    update's l_j are log pi at T = 0.7, not at T = 1."""
    model, tokenizer = tiny
    sampling = SamplingConfig(temperature=0.7, max_new_tokens=MAX_NEW)
    rollout = HFEngine(model, tokenizer, sampling).generate(PROMPTS, 3, seed=0)
    tempered, untempered = sequence_logprobs(model, rollout, 0.7), sequence_logprobs(model, rollout, 1.0)
    # A_j = +-1 with the sign of l_j(T=0.7) - l_j(T=1): the pg term -mean_j A_j l_j of a T = 1
    # update would sit mean_j |l_j(0.7) - l_j(1)| (measured 0.26) away from the tempered one's
    advantages = torch.where(tempered >= untempered, 1.0, -1.0)
    assert (tempered - untempered).abs().mean() > 100 * MAX_NEW * LOGP_ATOL   # not rounding
    cfg = rl.RLConfig(sampling=sampling, tau=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = rl.minibatch_step(Loop(None, model, optimizer, cfg.optim.grad_clip, 1), rollout, advantages,
                              torch.arange(len(advantages)), cfg, 0.0)
    # measured: 4.4e-8 per token, 6.1e-7 per sequence
    assert stats["opmd/log_ratio_tok_abs"] < LOGP_ATOL            # mean_t |logp_t - logp_old_t|
    assert stats["opmd/log_ratio_seq_abs"] < MAX_NEW * LOGP_ATOL  # mean_j |l_j - l_old_j|
    expected = float(-(advantages * tempered).mean())
    assert abs(stats["opmd/pg_term_seq"] - expected) < MAX_NEW * LOGP_ATOL


def test_top_p_below_one_is_refused_in_rl():
    with pytest.raises(OpenK1Error,
                       match=r"^config: sampling\.top_p < 1 \(got 0\.9\) is not supported in RL: ") as info:
        build(rl.RLConfig, parse_overrides(["sampling.top_p=0.9"]))
    assert "\n" not in str(info.value) and "(set top_p: 1)" in str(info.value)
    # top-p 1 is the default; eval (no loss) may keep its own top-p < 1
    cfg = build(rl.RLConfig, parse_overrides(["sampling.top_p=1", "eval.sampling.top_p=0.9"]))
    assert cfg.eval.sampling.top_p == 0.9


def test_vllm_engine_asks_for_the_tempered_log_probs():
    """vLLM's default log-probs are the raw logits'; from 0.10.2 the processed ones include T."""
    assert logprobs_mode_args("0.10.2", 0.7) == {"logprobs_mode": "processed_logprobs"}
    assert logprobs_mode_args("0.11.0+cu128", 1.0) == {"logprobs_mode": "processed_logprobs"}
    assert logprobs_mode_args("0.9.2", 1.0) == {}   # raw = processed at T = 1, top-p 1
    with pytest.raises(RuntimeError, match="temperature 0.7"):
        logprobs_mode_args("0.10.1", 0.7)
