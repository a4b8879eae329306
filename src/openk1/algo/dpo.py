"""Direct preference optimisation (Rafailov et al. 2023), used by long2short (k1.5 report §2.4).

For a pair (chosen y_w, rejected y_l) of responses to one prompt x, with sequence log-probs
l = sum_t log pi_theta(y_t | x, y_<t) over the response tokens (`action_mask` = 1) under the
policy and l_ref the same under the frozen reference model:

    h_i    = beta * [ (l_w,i - l_ref_w,i) - (l_l,i - l_ref_l,i) ]       implicit reward margin
    loss   = (1/N) sum_i -log sigmoid(h_i)

The report builds the pairs for long2short: chosen = the shortest correct answer; rejected =
a wrong answer, or a correct one at least 1.5x longer than the chosen. `nll_weight` > 0 adds
(1/N) sum_i nll_weight * (-l_w,i / n_w,i), the chosen response's mean NLL per token (n_w,i
tokens): an SFT term on the chosen answers that keeps a small policy from drifting off them
while the margin grows (our addition, off by default; the report gives no DPO details).

Shapes: every input is [B] (one value per pair, already summed over tokens). `normaliser` is N,
the number of pairs in the WHOLE optimizer batch, so micro-batch losses add up to the batch loss
(aggregate.py's convention); it defaults to B.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Metrics = dict[str, torch.Tensor]


def dpo_loss(
    logp_chosen: torch.Tensor,
    logp_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    normaliser: float | None = None,
    chosen_tokens: torch.Tensor | None = None,
    nll_weight: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """(loss, metrics) of B preference pairs; see the module docstring for the equations.

    logp_chosen/logp_rejected [B]: sequence log-probs under the policy (carry gradients);
    ref_chosen/ref_rejected [B]: the same under the reference (constants); chosen_tokens [B]:
    n_w, needed only when nll_weight > 0. Metrics are batch means (detached):
    reward/chosen = beta (l_w - l_ref_w), reward/rejected, reward/margin = h,
    reward/accuracy = fraction of pairs with h > 0, nll/chosen = -l_w / n_w.
    """
    n = float(logp_chosen.shape[0]) if normaliser is None else normaliser
    reward_chosen = beta * (logp_chosen - ref_chosen)                          # [B]
    reward_rejected = beta * (logp_rejected - ref_rejected)                    # [B]
    margin = reward_chosen - reward_rejected                                   # [B] = h
    loss = -F.logsigmoid(margin).sum() / n
    metrics: Metrics = {
        "reward/chosen": reward_chosen.detach().mean(),
        "reward/rejected": reward_rejected.detach().mean(),
        "reward/margin": margin.detach().mean(),
        "reward/accuracy": (margin.detach() > 0).float().mean(),
    }
    if nll_weight > 0:
        if chosen_tokens is None:
            raise ValueError("nll_weight > 0 needs chosen_tokens")
        nll = -logp_chosen / chosen_tokens.to(logp_chosen.dtype).clamp(min=1.0)   # [B]
        loss = loss + nll_weight * nll.sum() / n
        metrics["nll/chosen"] = nll.detach().mean()
    return loss, metrics
