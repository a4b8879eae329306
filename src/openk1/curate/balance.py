"""Balance, `curate.balance` (report §2.1, "diverse coverage"): downsample domains to target
proportions, so that no domain crowds out the others. Only downsamples: no prompt is repeated.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Annotated

from pydantic import Field

from openk1.config import Section
from openk1.curate.rows import Row, alive, drop
from openk1.errors import OpenK1Error


class BalanceSettings(Section):
    targets: dict[str, Annotated[float, Field(ge=0.0)]] = Field(
        default_factory=dict,
        description="domain -> proportion (normalised; 0 drops the domain); empty: keep the mix as it is")


def balance_counts(available: dict[str, int], targets: dict[str, float]) -> dict[str, int]:
    """Rows to keep per domain: the largest set with the target proportions that the available
    rows allow (downsampling only). Domains without a target keep 0 rows; a targeted domain
    with no rows at all is left out and the other targets renormalised.

    N = min over targeted domains d of available_d / t_d;  keep_d = floor(t_d * N)

    >>> balance_counts({"math": 60, "code": 10, "general": 30}, {"math": 0.5, "code": 0.25, "general": 0.25})
    {'math': 20, 'code': 10, 'general': 10}
    """
    present = {d: t for d, t in targets.items() if t > 0 and available.get(d, 0) > 0}
    total = sum(present.values())
    shares = {d: t / total for d, t in present.items()}
    if not shares:
        return {d: 0 for d in available}
    n = min(available.get(d, 0) / s for d, s in shares.items())
    return {d: int(shares[d] * n + 1e-9) if d in shares else 0 for d in available}


def balance_mask(domains: list[str], targets: dict[str, float], seed: int) -> list[bool]:
    """Which rows to keep so the domain mix follows `targets`; the rows kept within a domain
    are a seeded random sample (input order is preserved by the caller)."""
    by_domain: dict[str, list[int]] = {}
    for i, d in enumerate(domains):
        by_domain.setdefault(d, []).append(i)
    counts = balance_counts({d: len(ix) for d, ix in by_domain.items()}, targets)
    keep = [False] * len(domains)
    for d, ix in sorted(by_domain.items()):
        for i in random.Random(f"{seed}-balance-{d}").sample(ix, counts[d]):
            keep[i] = True
    return keep


def check_targets(rows: list[Row], targets: dict[str, float]) -> None:
    """Fail before any generation when balancing would drop every row."""
    present = {str(r.data["domain"]) for r in alive(rows)}
    if targets and present and not present & {d for d, t in targets.items() if t > 0}:
        raise OpenK1Error(f"balance.targets names none of the domains present "
                          f"({', '.join(sorted(present))}): every row would be dropped")


def balance_rows(rows: list[Row], targets: dict[str, float], seed: int, counts: Counter[str]) -> None:
    """Drop rows (`balance`) until the domain mix of the kept rows follows `targets`."""
    rows_left = alive(rows)
    keep = balance_mask([str(r.data["domain"]) for r in rows_left], targets, seed)
    for row, kept in zip(rows_left, keep):
        if not kept:
            drop(row, "balance", counts, reason_detail=f"domain {row.data['domain']} over its target")

