"""Loss aggregation: hand-computed values, and splitting a mini-batch into micro-batches and ranks
(each called with the global normaliser) reproduces the full-batch loss and gradient."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from openk1.algo.aggregate import (
    AGGREGATIONS,
    global_normaliser,
    local_normaliser,
    seq_mean,
    seq_mean_token_mean,
    token_mean,
)
from openk1.algo.opmd import SURROGATES, compute_advantages, opmd_loss

F64 = torch.float64
NAN = float("nan")

# Row 0: 2 valid tokens, row 1: 1, row 2: none (padding row). NaN on padded positions must not leak.
TERMS = torch.tensor([[1.0, 2.0, NAN], [3.0, NAN, NAN], [NAN, NAN, NAN]], dtype=F64)
MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
# per-sequence sums S = [1 + 2, 3, 0] = [3, 3, 0]; lengths [2, 1, 0]
# N_seq = 2 (the empty row is not a sequence), N_tok = 3


def test_local_normaliser_counts() -> None:
    assert local_normaliser("seq_mean", MASK) == 2.0
    assert local_normaliser("seq_mean_token_mean", MASK) == 2.0
    assert local_normaliser("token_mean", MASK) == 3.0
    assert global_normaliser("token_mean", torch.zeros(2, 3)) == 1.0  # empty batch: no 0/0


@pytest.mark.parametrize("per_sequence", [False, True])
def test_hand_computed_aggregations(per_sequence: bool) -> None:
    terms = torch.tensor([3.0, 3.0, 0.0], dtype=F64) if per_sequence else TERMS
    # seq_mean: (3 + 3 + 0) / 2 = 3;  token_mean: 6 / 3 = 2
    # seq_mean_token_mean: (3/2 + 3/1 + 0) / 2 = 4.5 / 2 = 2.25
    assert float(seq_mean(terms, MASK, 2.0)) == pytest.approx(3.0, abs=1e-6)
    assert float(token_mean(terms, MASK, 3.0)) == pytest.approx(2.0, abs=1e-6)
    assert float(seq_mean_token_mean(terms, MASK, 2.0)) == pytest.approx(2.25, abs=1e-6)


def test_aggregation_normaliser_may_be_a_tensor() -> None:
    # 6 / 4 = 1.5 (a larger, global normaliser: this batch is part of a mini-batch of 4 sequences)
    assert float(seq_mean(TERMS, MASK, torch.tensor(4.0, dtype=F64))) == pytest.approx(1.5)


def _batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, t = 8, 6
    lengths = torch.tensor([6, 1, 3, 0, 5, 2, 6, 4])  # row 3 is an all-padding row
    return {
        "theta": torch.randn(b, t, generator=g, dtype=F64),  # logp = -softplus(theta) <= 0
        "logp_old": -torch.nn.functional.softplus(torch.randn(b, t, generator=g, dtype=F64)),
        "mask": (torch.arange(t)[None, :] < lengths[:, None]).long(),
        "rewards": torch.rand(b, generator=g, dtype=F64),
        "groups": torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]),  # every prompt spans both "ranks"
    }


def _loss_and_grad(
    p: dict[str, torch.Tensor],
    rows: list[int],
    adv: torch.Tensor,
    level: str,
    agg: str,
    norm: float,
) -> tuple[float, torch.Tensor]:
    theta = p["theta"].clone().requires_grad_()
    logp = -torch.nn.functional.softplus(theta)
    idx = torch.tensor(rows)
    loss, _ = opmd_loss(
        logp[idx],
        p["logp_old"][idx],
        adv[idx],
        p["mask"][idx],
        0.3,
        level=level,
        aggregation=agg,
        normaliser=norm,
    )
    loss.backward()
    assert theta.grad is not None
    return float(loss.detach()), theta.grad


@pytest.mark.parametrize("level", sorted(SURROGATES))
@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
def test_micro_batches_and_ranks_reproduce_full_batch(level: str, agg: str) -> None:
    p = _batch(0)
    adv, _ = compute_advantages(p["rewards"], p["groups"], 0.3)  # on the whole batch, once
    full_norm = global_normaliser(agg, p["mask"])
    loss_full, grad_full = _loss_and_grad(p, list(range(8)), adv, level, agg, full_norm)
    # the default normaliser (None) is this batch's own count: the same for the full batch
    theta = p["theta"].clone()
    loss_default, _ = opmd_loss(
        -torch.nn.functional.softplus(theta),
        p["logp_old"],
        adv,
        p["mask"],
        0.3,
        level=level,
        aggregation=agg,
    )
    assert float(loss_default) == pytest.approx(loss_full, abs=1e-12)

    # 2 "ranks" x 2 micro-batches of unequal sizes; the global normaliser is the sum of the
    # ranks' local counts (what global_normaliser(all_reduce=True) computes)
    ranks = [[0, 1, 2, 3], [4, 5, 6, 7]]
    norm = sum(local_normaliser(agg, p["mask"][torch.tensor(r)]) for r in ranks)
    assert norm == full_norm
    micro = [[0], [1, 2, 3], [4, 5, 6], [7]]
    loss_sum, grad_sum = 0.0, torch.zeros_like(grad_full)
    for rows in micro:
        loss, grad = _loss_and_grad(p, rows, adv, level, agg, norm)
        loss_sum, grad_sum = loss_sum + loss, grad_sum + grad
    assert loss_sum == pytest.approx(loss_full, abs=1e-6)
    torch.testing.assert_close(grad_sum, grad_full, atol=1e-6, rtol=0)
    # and a LOCAL normaliser per micro-batch would not (the classic mistake this guards against)
    wrong = sum(
        _loss_and_grad(
            p, rows, adv, level, agg, local_normaliser(agg, p["mask"][torch.tensor(rows)])
        )[0]
        for rows in micro
    )
    assert abs(wrong - loss_full) > 1e-3


def _rank_worker(rank: int, init_file: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    mask = torch.ones(3 + rank, 4)  # rank 0: 3 rows, rank 1: 4 rows -> 7 sequences, 28 tokens
    counts = [global_normaliser(a, mask, all_reduce=True) for a in ("seq_mean", "token_mean")]
    torch.save(counts, os.path.join(results, f"{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.distributed
def test_global_normaliser_all_reduces_over_ranks() -> None:
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_rank_worker, args=(os.path.join(d, "init"), d), nprocs=2)
        for rank in (0, 1):
            assert torch.load(os.path.join(d, f"{rank}.pt")) == [7.0, 28.0]
