"""Loss aggregation, kept apart from the objective.

An objective (e.g. `opmd.opmd_token_terms`) returns unreduced terms; an aggregation turns them into
one scalar. Every aggregation here first reduces to per-sequence sums S_j and then takes a weighted
sum

    loss = sum_j w_j * S_j          with  S_j = sum_t terms[j, t] * action_mask[j, t]

    seq_mean             w_j = 1 / N_seq            (the report's (1/k) sum_j, mean over prompts)
    token_mean           w_j = 1 / N_tok            (every token weighs the same)
    seq_mean_token_mean  w_j = 1 / (len_j * N_seq)  (each sequence's mean over its tokens)

with len_j = sum_t action_mask[j, t]. N_seq / N_tok are passed in as `normaliser`: the number of
sequences / valid tokens of the WHOLE mini-batch (all micro-batches, all ranks; see
`global_normaliser`). Because the loss is a sum over sequences with weights that depend only on the
sequence itself and the global normaliser, the aggregated losses of micro-batches (each called with
the global normaliser) add up exactly to the full mini-batch loss, and so do their gradients.
Under data parallelism, sum (do not average) gradients across ranks, or multiply the loss by the
world size when the framework averages them (DDP/FSDP do).

Shapes: terms [B, T] per-token terms, or [B] per-sequence terms (already summed over tokens, as
`opmd.opmd_sequence_terms` returns); action_mask [B, T] (1 where a token is trained).
A "sequence" is a row with at least one valid token, so all-padding rows count for nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

Normaliser = float | torch.Tensor
Aggregation = Callable[[torch.Tensor, torch.Tensor, Normaliser], torch.Tensor]


def _per_sequence_sums(terms: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """S_j [B]: terms [B, T] summed over valid tokens, or terms [B] returned as they are."""
    if terms.dim() == 1:
        return terms
    if terms.shape != action_mask.shape:
        raise ValueError(f"terms {tuple(terms.shape)} vs action_mask {tuple(action_mask.shape)}")
    # where, not multiply: a NaN/inf on a padded position must not leak into the sum
    return torch.where(action_mask.bool(), terms, 0.0).sum(-1)


def seq_mean(
    terms: torch.Tensor, action_mask: torch.Tensor, normaliser: Normaliser
) -> torch.Tensor:
    """sum_j S_j / N_seq, with `normaliser` = N_seq sequences in the whole mini-batch."""
    return _per_sequence_sums(terms, action_mask).sum() / normaliser


def token_mean(
    terms: torch.Tensor, action_mask: torch.Tensor, normaliser: Normaliser
) -> torch.Tensor:
    """sum_j S_j / N_tok, with `normaliser` = N_tok valid tokens in the whole mini-batch."""
    return _per_sequence_sums(terms, action_mask).sum() / normaliser


def seq_mean_token_mean(
    terms: torch.Tensor, action_mask: torch.Tensor, normaliser: Normaliser
) -> torch.Tensor:
    """sum_j (S_j / len_j) / N_seq, with `normaliser` = N_seq; empty rows contribute 0."""
    sums = _per_sequence_sums(terms, action_mask)  # [B]
    lengths = action_mask.sum(-1).to(sums.dtype).clamp(min=1.0)  # [B]
    return (sums / lengths).sum() / normaliser


AGGREGATIONS: dict[str, Aggregation] = {
    "seq_mean": seq_mean,
    "token_mean": token_mean,
    "seq_mean_token_mean": seq_mean_token_mean,
}

# What each aggregation's normaliser counts.
NORMALISER_UNITS: dict[str, str] = {
    "seq_mean": "sequences",
    "token_mean": "tokens",
    "seq_mean_token_mean": "sequences",
}


def local_normaliser(aggregation: str, action_mask: torch.Tensor) -> float:
    """Number of sequences (rows with a valid token) or valid tokens in action_mask [B, T]."""
    unit = NORMALISER_UNITS[aggregation]
    mask = action_mask.bool()
    count = mask.any(-1).sum() if unit == "sequences" else mask.sum()
    return float(count)


def global_normaliser(
    aggregation: str,
    action_mask: torch.Tensor,
    *,
    all_reduce: bool = False,
    group: dist.ProcessGroup | None = None,
) -> float:
    """The normaliser of a whole mini-batch, to pass to every micro-batch's aggregation.

    action_mask [B, T] is this rank's whole mini-batch (all its micro-batches). With
    all_reduce=True (and torch.distributed initialised) the counts of all ranks in `group` are
    summed, so that each rank's loss is its exact share of the global mini-batch loss.
    """
    count = local_normaliser(aggregation, action_mask)
    if all_reduce and dist.is_available() and dist.is_initialized():
        t = torch.tensor(count, dtype=torch.float64, device=action_mask.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        count = float(t)
    return max(count, 1.0)  # an all-empty mini-batch gives a zero loss, not 0/0
