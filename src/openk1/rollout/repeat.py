"""Repeat detection (report §2.6): end a generation whose tail has started to loop.

The rule. After token t a response is repeating when, for some period p in 1..max_period, its
last L_p = max(min_repeats * p, min_tokens) tokens are periodic with period p
(x[j] == x[j - p] for every j in the tail but its first p): a block of p tokens written
min_repeats times back to back, min_tokens tokens at least. Only exact back-to-back copies
count: reasoning that comes back to a phrase now and then ("wait, let me check") never does,
and min_tokens keeps short runs such as the zeros of 1000000 out.

Incremental form. For each period p keep run_p, the number of latest consecutive positions j
with x[j] == x[j - p]; the last run_p + p tokens then have period p, so the rule is
run_p >= L_p - p. One [B, max_period] comparison per generated token.
"""

from __future__ import annotations

import torch
from pydantic import Field

from openk1.config import Section

MAX_PERIOD = 128    # longest repeated block looked for, in tokens
MIN_REPEATS = 5     # copies of the block back to back (4 identical CoT lines do not trigger)
MIN_TOKENS = 32     # tokens the repeated tail must cover at least


class RepeatConfig(Section):
    """Stop a response whose tail repeats (rule in the module docstring); off by default."""

    enabled: bool = Field(False, description="stop a response whose tail repeats (report §2.6)")
    max_period: int = Field(MAX_PERIOD, ge=1, description="longest repeated block looked for, in tokens")
    min_repeats: int = Field(MIN_REPEATS, ge=2, description="copies of the block back to back")
    min_tokens: int = Field(MIN_TOKENS, ge=2, description="tokens the repeated tail must cover at least")


def required_runs(max_period: int, min_repeats: int, min_tokens: int) -> torch.Tensor:
    """[max_period] run_p needed for period p = 1..max_period: max(min_repeats p, min_tokens) - p.

    >>> required_runs(3, 4, 10).tolist()
    [9, 8, 9]
    """
    p = torch.arange(1, max_period + 1, device="cpu")
    return torch.clamp(min_repeats * p, min=min_tokens) - p


class RepeatDetector:
    """Token-by-token repeat detector over a batch of B responses, each row on its own.

    history [B, max_period]  history[:, p - 1] = the token p steps back (-1 before the start)
    runs    [B, max_period]  run_p of each row
    fired   [B]              the row has met the rule at some step

    >>> detector = RepeatDetector(batch_size=2, max_period=4, min_repeats=4, min_tokens=12)
    >>> rows = [list(b"12+12+12+12+"), list(b"7+6=13 c1\\n0+")]
    >>> hits = [detector.update(torch.tensor(step)) for step in zip(*rows)]
    >>> [int(h[0]) for h in hits].index(1), bool(detector.fired[1])    # fires on the last "+"
    (11, False)
    """

    def __init__(self, batch_size: int, max_period: int = MAX_PERIOD,
                 min_repeats: int = MIN_REPEATS, min_tokens: int = MIN_TOKENS,
                 device: torch.device | str = "cpu") -> None:
        needed = required_runs(max_period, min_repeats, min_tokens)
        self.needed = needed.to(device, torch.int32)                             # [P]
        self.history = torch.full((batch_size, max_period), -1, dtype=torch.long, device=device)
        self.runs = torch.zeros((batch_size, max_period), dtype=torch.int32, device=device)
        self.fired = torch.zeros(batch_size, dtype=torch.bool, device=device)

    @classmethod
    def from_config(cls, cfg: RepeatConfig, batch_size: int,
                    device: torch.device | str = "cpu") -> RepeatDetector:
        return cls(batch_size, cfg.max_period, cfg.min_repeats, cfg.min_tokens, device)

    def update(self, tokens: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """Feed each row's newest token; [B] True where a row has just started repeating.

        tokens [B] long; active [B] bool (default all): rows left out (already finished, say)
        keep their state and return False, so padding after an EOS never counts.
        """
        same = self.history == tokens.to(self.history)[:, None]             # [B, P]
        runs = (self.runs + 1) * same                                        # [B, P]
        history = torch.cat([tokens.to(self.history)[:, None], self.history[:, :-1]], dim=1)
        if active is not None:
            paused = ~active.to(self.history.device)[:, None]               # [B, 1]
            runs = torch.where(paused, self.runs, runs)
            history = torch.where(paused, self.history, history)
        self.runs, self.history = runs, history
        # a paused row's runs are those it had when it last ran, then below the threshold
        new = (runs >= self.needed).any(-1) & ~self.fired                    # [B]
        self.fired |= new
        return new

    def prime(self, prefixes: list[list[int]]) -> None:
        """Feed each row the tokens it generated earlier (a continued partial rollout)."""
        width = max(map(len, prefixes), default=0)
        for t in range(width):
            column = torch.tensor([p[t] if t < len(p) else -1 for p in prefixes], device="cpu")
            self.update(column, active=torch.tensor([t < len(p) for p in prefixes], device="cpu"))

    def select(self, rows: torch.Tensor) -> RepeatDetector:
        """Keep `rows` [b], in that order (continuous batching drops finished rows)."""
        self.history, self.runs, self.fired = self.history[rows], self.runs[rows], self.fired[rows]
        return self

    def join(self, other: RepeatDetector) -> RepeatDetector:
        """Rows of self, then rows of `other` (sequences admitted later)."""
        self.history = torch.cat([self.history, other.history])
        self.runs = torch.cat([self.runs, other.runs])
        self.fired = torch.cat([self.fired, other.fired])
        return self


def first_repeat(token_ids: list[int], max_period: int = MAX_PERIOD,
                 min_repeats: int = MIN_REPEATS, min_tokens: int = MIN_TOKENS) -> int | None:
    """Index of the token after which the rule first holds, None if it never does.

    Whole-sequence form of RepeatDetector (same answer): per period, run lengths of
    x[j] == x[j - p] from a cumulative max of the last mismatch.

    >>> first_repeat(list(b"ab12+12+12+12+"), min_repeats=4, min_tokens=12)   # p = 3, 4 copies
    13
    """
    x = torch.as_tensor(token_ids, dtype=torch.long, device="cpu")
    needed = required_runs(max_period, min_repeats, min_tokens)
    first = len(x)
    for p in range(1, min(max_period, len(x) - 1) + 1):
        same = x[p:] == x[:-p]                                  # [T - p]: x[p + k] == x[k]
        position = torch.arange(len(same), device="cpu")
        last_miss = torch.where(same, -1, position).cummax(0).values
        hits = ((position - last_miss) >= needed[p - 1]).nonzero()
        if len(hits):
            first = min(first, int(hits[0]) + p)
    return None if first == len(x) else first


def is_repetitive(token_ids: list[int], max_period: int = MAX_PERIOD,
                  min_repeats: int = MIN_REPEATS, min_tokens: int = MIN_TOKENS) -> bool:
    """Whether a finished response meets the repeat rule anywhere (post-hoc check).

    >>> is_repetitive(list(b"12+" * 11)), is_repetitive(list(b"7+6=13 c1\\n0+5+1=6 c0"))
    (True, False)
    """
    return first_repeat(token_ids, max_period, min_repeats, min_tokens) is not None
