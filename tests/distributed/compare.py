"""How a run on 2 ranks (torchrun, or Ray's trainer actor) is compared with one process: what
is invariant at fp32 rounding, and the weights through their update (test_torchrun.py's
docstring derives both bounds)."""

from __future__ import annotations

# Same-weights quantities and per-step metrics (fp32): rounding of reductions over up to ~1e3
# terms, 1e-7 to 1e-6 relative (measured <= 1.9e-6 with AMX / AVX2 / default kernels, 1 and 2
# threads); a rank that drops its share or a wrong normaliser moves them by >= 1e-2. Later steps
# start from weights Adam moved apart only where the gradient is ~0 (above): their loss and
# gradient norm move by ~ g * dw ~ 0.
REL = 1e-4
# ||update_2 - update_1|| / ||update_1|| after fp32 Adam: the coordinates Adam amplifies are few;
# measured <= 6e-5 (same kernels and threads); >= 0.017 when rank 1 drops a micro-batch or the
# normaliser misses the other rank's tokens (real bugs): 1e-3 sits ~17x from both.
UPDATE_REL = 1e-3
# The fp64 run of rl.update. Invariants: fp64 rounding (1.1e-16) x the reductions' depth, measured
# <= 5e-16 relative. Weights: Adam's step lr * m / (sqrt(v) + eps) moves by at most lr / eps
# (1e6 at lr 0.01) times a change of the gradient, so gradients 1e-15 apart (|g| <= ~1) can put
# the weights at most 6 steps x 1e-9 apart: 1e-8 (measured <= 2e-14); a bug moves them by ~lr.
FP64_REL, FP64_WEIGHTS = 1e-12, 1e-8


def scaled_diff(a: float, b: float) -> float:
    """|a - b| / max(|b|, 1): losses and margins are sums of O(1) terms of both signs, rounded at
    the terms' scale even where the sum is ~0 (DPO's margin at step 1)."""
    return abs(a - b) / max(abs(b), 1.0)


def assert_metrics_close(m1: list[dict], m2: list[dict], keys=None, skip=(), rel: float = REL) -> float:
    """Every metric row of 2 ranks (m2) equals 1 process's (m1) within `rel` (scaled_diff);
    returns the largest difference."""
    worst = 0.0
    for r1, r2 in zip(m1, m2, strict=True):
        for key in keys or r1:
            if not key.startswith(skip):
                diff = scaled_diff(r2[key], r1[key])
                assert diff <= rel, (key, r1, r2)
                worst = max(worst, diff)
    return worst


def rel_diff(a: dict, b: dict, start: dict | None = None) -> float:
    """||a - b|| / ||b - start|| over all tensors (start None: ||b||), in float64."""
    keys = sorted(b)
    num = sum(float((a[k].double() - b[k].double()).square().sum()) for k in keys)
    den = sum(float((b[k].double() - (0 if start is None else start[k].double())).square().sum()) for k in keys)
    return (num / den) ** 0.5
