"""Online policy mirror descent (k1.5 report §2.3): baselines, advantages, surrogate.

Iteration i maximises E[r] - tau * KL(pi_theta || pi_theta_i) with the sampling policy pi_theta_i
as the reference. Its closed form pi* = pi_theta_i * exp(r / tau) / Z gives the surrogate loss

    L(theta) = E_{y ~ pi_theta_i} [ (r - tau log Z - tau log(pi_theta(y) / pi_theta_i(y)))^2 ]

whose gradient is, up to the factor 2 tau, that of the equivalent loss this module implements:

    (1/k) sum_j [ -(r_j - b) * l_j + (tau/2) * (l_j - l_old_j)^2 ]                          (*)

with b the estimate of tau log Z (`BASELINES`), l_j = log pi_theta(y_j | x) and l_old_j the same
under pi_theta_i (fixed). The report's gradient (Eq. 3, an ascent direction) is minus the gradient
of (*). No value network, no ratio, no clipping.

Shapes: B sequences (prompts x k samples), T response length. group_ids [B] says which prompt a
sequence belongs to (any integer labels; a group's rows need not be contiguous).

Two levels for the log-ratio (`SURROGATES`; the report writes the sequence level and does not say
which it trained with):

  sequence  term_j = -A_j l_j + (tau/2)(l_j - l_old_j)^2,  l_j = sum_t logp[j, t] action_mask[j, t]
  token     term_{j,t} = -A_j logp[j, t] + (tau/2)(logp[j, t] - logp_old[j, t])^2 on valid tokens

The first part is identical at both levels (sum_t -A_j logp[j, t] = -A_j l_j). Only the tau term
differs. With per-token log-ratios d_t = logp_t - logp_old_t, the tau term's gradient on token t
is tau * sum_s d_s (sequence) vs tau * d_t (token). For a response whose T valid tokens drift
together (d_t = d for all t) that is tau * T * d vs tau * d: the sequence-level pull is T times
stronger, so tau_sequence ~= tau_token / T gives the same pull (T = the typical response length;
the squared term is (T d)^2 vs T d^2). For independent random-sign drifts E[(sum_s d_s)^2] =
sum_s E[d_s^2], the two agree in expectation. The aggregation (`aggregate.AGGREGATIONS`) rescales
both parts of the loss together, so it changes the effective learning rate, not this tau ratio.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from openk1.algo.aggregate import AGGREGATIONS, Normaliser, local_normaliser

Metrics = dict[str, torch.Tensor]
Baseline = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
Surrogate = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float],
    tuple[torch.Tensor, Metrics],
]


# ----------------------------------------------------------------------------- baselines


def _group_index(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary group labels [B] to (index [B] in 0..G-1, G)."""
    uniq, index = torch.unique(group_ids, return_inverse=True)
    return index, uniq.numel()


def _group_sum(x: torch.Tensor, index: torch.Tensor, num_groups: int) -> torch.Tensor:
    """[G] per-group sums of x [B]."""
    return torch.zeros(num_groups, dtype=x.dtype, device=x.device).index_add_(0, index, x)


def mean_baseline(rewards: torch.Tensor, group_ids: torch.Tensor, tau: float = 0.0) -> torch.Tensor:
    """b_j = r_mean of j's group = (1/k) sum_{j' in group} r_j' -> [B] (the report's "in practice").

    rewards [B] float, group_ids [B]. `tau` is unused (uniform signature with `log_z_baseline`).
    """
    index, num_groups = _group_index(group_ids)
    sums = _group_sum(rewards, index, num_groups)
    counts = _group_sum(torch.ones_like(rewards), index, num_groups)
    return (sums / counts)[index]


def log_z_baseline(rewards: torch.Tensor, group_ids: torch.Tensor, tau: float) -> torch.Tensor:
    """b_j = tau * log((1/k) sum_{j' in group} exp(r_j' / tau))  -> [B]  (estimate of tau log Z).

    Computed as tau * (logsumexp(r / tau) - log k) per group, stable for any tau > 0. It lies
    between the group mean (tau -> inf) and the group max (tau -> 0).
    """
    if tau <= 0:
        raise ValueError(f"log_z_baseline needs tau > 0, got {tau}")
    index, num_groups = _group_index(group_ids)
    x = rewards / tau  # [B]
    x_max = torch.full((num_groups,), -math.inf, dtype=x.dtype, device=x.device)
    x_max = x_max.scatter_reduce(0, index, x, reduce="amax")  # [G]
    sum_exp = _group_sum(torch.exp(x - x_max[index]), index, num_groups)  # [G]
    counts = _group_sum(torch.ones_like(x), index, num_groups)  # [G]
    return (tau * (x_max + torch.log(sum_exp) - torch.log(counts)))[index]


BASELINES: dict[str, Baseline] = {"mean": mean_baseline, "log_z": log_z_baseline}


def compute_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, tau: float, baseline: str = "mean"
) -> tuple[torch.Tensor, Metrics]:
    """advantages = r_j - b_j  -> ([B], metrics), b from `BASELINES[baseline]`.

    A group whose k rewards are all equal gets advantages of exactly 0 (not rounding noise):
    it carries no signal for the policy term. Call this on the whole batch, before splitting
    into micro-batches, since the baseline needs every sample of a prompt.
    """
    rewards = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    b = BASELINES[baseline](rewards, group_ids, tau)  # [B]
    index, num_groups = _group_index(group_ids)
    r_max = torch.full((num_groups,), -math.inf, dtype=rewards.dtype, device=rewards.device)
    r_max = r_max.scatter_reduce(0, index, rewards, reduce="amax")
    r_min = torch.full((num_groups,), math.inf, dtype=rewards.dtype, device=rewards.device)
    r_min = r_min.scatter_reduce(0, index, rewards, reduce="amin")
    flat = r_max == r_min  # [G] groups with no signal
    advantages = torch.where(flat[index], 0.0, rewards - b)
    metrics = {
        "adv/abs_mean": advantages.abs().mean().detach(),
        "adv/baseline_mean": b.mean().detach(),
        "adv/flat_group_frac": flat.to(rewards.dtype).mean(),
    }
    return advantages, metrics


# ----------------------------------------------------------------------------- surrogates


def _log_ratio_metrics(d: torch.Tensor, mask: torch.Tensor) -> Metrics:
    """Diagnostics of d = logp - logp_old [B, T] (0 off-mask), local to this (micro-)batch."""
    with torch.no_grad():
        n_tok = mask.sum().clamp(min=1)
        d_clamped = d.clamp(-20.0, 20.0)
        k3 = torch.where(mask, torch.expm1(d_clamped) - d_clamped, 0.0)  # >= 0, E_old[.] = KL
        return {
            "opmd/log_ratio_seq_abs": d.sum(-1).abs().mean(),  # mean_j |l_j - l_old_j|
            "opmd/log_ratio_tok_abs": d.abs().sum() / n_tok,  # mean |logp_t - logp_old_t|
            "opmd/kl_old_new_per_token": k3.sum() / n_tok,  # k3 estimate of KL(old || new)
        }


def _masked(
    logp: torch.Tensor, logp_old: torch.Tensor, action_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mask = action_mask.bool()
    logp = torch.where(mask, logp, 0.0)
    # in logp's dtype before any sum: fp32 rollout log-probs summed in fp32 would make an fp64
    # update depend on the micro-batch's width at the 1e-8 level
    logp_old = torch.where(mask, logp_old.detach().to(logp.dtype), 0.0)
    return logp, logp_old, mask


def opmd_sequence_terms(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    action_mask: torch.Tensor,
    tau: float,
) -> tuple[torch.Tensor, Metrics]:
    """Per-sequence terms [B]: -A_j * l_j + (tau/2) * (l_j - l_old_j)^2 and metrics.

    logp [B, T] log pi_theta of each response token (with grad); logp_old [B, T] the same under
    the sampling policy pi_theta_i (detached here); advantages [B] = r_j - b_j (no grad);
    action_mask [B, T]; l_j = sum_t logp[j, t] over valid tokens. Scale of tau: the squared
    term is in units of whole-response log-ratios, (sum_t d_t)^2, so tau here should be about
    1/T of a token-level tau for the same pull (module docstring). Aggregate with any of
    `aggregate.AGGREGATIONS` (they accept [B] per-sequence terms).
    """
    logp, logp_old, mask = _masked(logp, logp_old, action_mask)
    l_seq, l_seq_old = logp.sum(-1), logp_old.sum(-1)  # [B]: l_j, l_old_j
    advantages = advantages.detach().to(l_seq.dtype)
    pg = -advantages * l_seq  # [B]
    reg = 0.5 * tau * (l_seq - l_seq_old) ** 2  # [B]
    metrics = _log_ratio_metrics(logp.detach() - logp_old, mask)
    metrics["opmd/pg_term_seq"] = pg.detach().mean()
    metrics["opmd/tau_term_seq"] = reg.detach().mean()
    return pg + reg, metrics


def opmd_token_terms(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    action_mask: torch.Tensor,
    tau: float,
) -> tuple[torch.Tensor, Metrics]:
    """Per-token terms [B, T]: -A_j logp[j,t] + (tau/2) (logp[j,t] - logp_old[j,t])^2, 0 off-mask.

    Same arguments as `opmd_sequence_terms`. Scale of tau: the squared term is in units of
    per-token log-ratios, so tau here is about T times a sequence-level tau for the same pull.
    """
    logp, logp_old, mask = _masked(logp, logp_old, action_mask)
    advantages = advantages.detach().to(logp.dtype)
    pg = torch.where(mask, -advantages[:, None] * logp, 0.0)  # [B, T]
    reg = 0.5 * tau * (logp - logp_old) ** 2  # [B, T], 0 off-mask since both are 0 there
    metrics = _log_ratio_metrics(logp.detach() - logp_old, mask)
    metrics["opmd/pg_term_seq"] = pg.detach().sum(-1).mean()
    metrics["opmd/tau_term_seq"] = reg.detach().sum(-1).mean()
    return pg + reg, metrics


SURROGATES: dict[str, Surrogate] = {"sequence": opmd_sequence_terms, "token": opmd_token_terms}


def opmd_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    action_mask: torch.Tensor,
    tau: float,
    *,
    level: str = "sequence",
    aggregation: str = "seq_mean",
    normaliser: Normaliser | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Scalar OPMD loss = AGGREGATIONS[aggregation](SURROGATES[level](...)) and metrics.

    Shapes as in `opmd_sequence_terms`. `normaliser` is the whole mini-batch's count from
    `aggregate.global_normaliser` when this is one micro-batch (or one rank's share); None uses
    this batch's own count. The defaults (sequence level, seq_mean) are the report's Eq. (*).
    """
    terms, metrics = SURROGATES[level](logp, logp_old, advantages, action_mask, tau)
    if normaliser is None:
        normaliser = max(local_normaliser(aggregation, action_mask), 1.0)
    loss = AGGREGATIONS[aggregation](terms, action_mask, normaliser)
    return loss, metrics
