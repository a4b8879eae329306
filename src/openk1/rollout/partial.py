"""Partial rollouts (report §2.6): a fixed output-token budget per trajectory and iteration.

Each iteration every unfinished trajectory gets at most `segment_tokens` new tokens, so an
iteration's rollout costs at most B x segment_tokens decoded tokens however long the longest
response is. A response cut by the budget (stop reason "budget") stays in the replay buffer with
its tokens, log-probs and the policy version (the RL iteration) that sampled each token; the
next iteration continues it from its prefix: the engine rebuilds the KV cache with one forward
pass over prompt + prefix. Its random stream (seed, sequence number) is fixed when it starts, so
a frozen policy writes, over several iterations, exactly the response it writes in one go.

Groups. The baseline needs all k responses of a prompt, so a group is trained in the iteration
its last response finishes; its finished responses wait in the buffer with it.

Staleness bound. A trajectory's `max_segments`-th segment has no budget: it runs to EOS, a
repeat stop or max_new_tokens. Every group therefore trains within max_segments iterations of
its start, and no trained token is more than max_segments - 1 policy versions old. We finish
rather than drop: dropping would leave only the short responses of a group, those the length
penalty compares, and would waste the tokens sampled.

Old segments in the loss (`old_segments`):
    include  every token is trained; a token's logp_old is the log-prob recorded by the policy
             that sampled it (the report: earlier segments are reused, not recomputed), so for
             a carried token the regulariser tau/2 (l - l_old)^2 pulls towards the policy of
             the iteration that sampled it, not towards this iteration's
    mask     each response trains its last segment only (the tokens of its newest policy
             version); its earlier segments are context, moved to the prompt side of the batch
             (`loss_view`). A response that finished in an earlier iteration while its group
             waited trains the segment it finished with: every response gets a gradient once,
             short (early-finishing) ones too
Either way rewards, the length penalty and metrics see the whole response.

The regulariser's reference for carried tokens (`old_logp`): OPMD's step i is relative to
pi_theta_i (report §2.3.2), so by default (`current`) a carried token's log pi_theta_i is
recomputed under this iteration's policy before the update (one no-grad forward pass over the
responses that carry old tokens); `sampled` keeps the recorded log-prob of the policy that
sampled it, and the term tau/2 (l - l_old)^2 then pulls those tokens back towards an older
policy. Measured on the demo (docs/rl.md "RL data flow"): with `sampled` and most responses cut once, RL
stalled (53.4% -> 52.7% held-out after 10 iterations; without partial rollouts 69.1%).

With `enabled: false` there is no budget: every group finishes in the iteration it starts.
The buffer's state is JSON (ints and float32 log-probs, which round-trip exactly) and goes into
the RL checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field

from openk1.config import Section
from openk1.data.images import ImageRef
from openk1.padding import pad
from openk1.rollout.engine import Request, RolloutEngine
from openk1.types import Rollout

UNFINISHED = ("", "budget")


class PartialConfig(Section):
    enabled: bool = Field(False,
                          description="partial rollouts: a token budget per trajectory and iteration (report §2.6)")
    segment_tokens: int = Field(64, ge=1, description="output-token budget of a trajectory per iteration")
    max_segments: int = Field(4, ge=1, description="staleness bound: the last segment has no budget")
    old_segments: Literal["include", "mask"] = Field(
        "include", description="include: every token is trained; mask: only each response's last segment")
    old_logp: Literal["current", "sampled"] = Field(
        "current", description="logp_old of a carried token: recomputed by this iteration's policy, or as sampled")
    min_finished_groups: int = Field(1, ge=1, description="train once this many groups are complete (fewer wait)")


@dataclass
class Trajectory:
    """One response, sampled over one or more iterations."""

    prompt_ids: list[int]
    stream: tuple[int, int]                               # (seed, sequence number), fixed at start
    tokens: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)      # log pi of the policy that sampled each
    versions: list[int] = field(default_factory=list)    # RL iteration that sampled each token
    stop: str = ""                                       # "" or "budget" while unfinished
    images: tuple[ImageRef, ...] = ()                    # the prompt's (a VLM; models/vlm.py)

    @property
    def finished(self) -> bool:
        return self.stop not in UNFINISHED

    @property
    def segments(self) -> int:
        return len(set(self.versions))


@dataclass
class Group:
    """The k responses to one problem (`problem` indexes the RL problem list)."""

    problem: int
    trajectories: list[Trajectory]

    @property
    def finished(self) -> bool:
        return all(t.finished for t in self.trajectories)


class ReplayBuffer:
    """Groups with unfinished responses, carried from one iteration to the next."""

    def __init__(self) -> None:
        self.groups: list[Group] = []

    def state_dict(self) -> dict[str, Any]:
        return {"groups": [asdict(g) for g in self.groups]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.groups = [Group(g["problem"], [_trajectory(t) for t in g["trajectories"]]) for g in state["groups"]]


def _trajectory(state: dict[str, Any]) -> Trajectory:
    """A Trajectory from its JSON state (a checkpoint written before images has no `images`)."""
    images = tuple(ImageRef(**i) for i in state.get("images", ()))
    return Trajectory(**{**state, "stream": tuple(state["stream"]), "images": images})


def new_groups(problems: list[int], prompt_ids: list[list[int]], k: int, seed: int,
               images: list[tuple[ImageRef, ...]] | None = None) -> list[Group]:
    """k fresh trajectories per problem; the r-th of the call gets stream (seed, r), as in
    every engine's `generate` (rollout/engine.py requests_for). `images[i]`: problem i's (its
    prompt_ids carry their expanded `<image>` tokens)."""
    shown = images if images is not None else [()] * len(problems)
    return [Group(p, [Trajectory(list(ids), (seed, i * k + j), images=imgs) for j in range(k)])
            for i, (p, ids, imgs) in enumerate(zip(problems, prompt_ids, shown, strict=True))]


def budget(trajectory: Trajectory, cfg: PartialConfig) -> int | None:
    """Tokens the next segment may add: None (to the end) when off or at the staleness bound."""
    last = trajectory.segments + 1 >= cfg.max_segments
    return None if not cfg.enabled or last else cfg.segment_tokens


def advance(engine: RolloutEngine, groups: list[Group], iteration: int, cfg: PartialConfig) -> Rollout:
    """Sample the next segment of every unfinished trajectory of `groups` (updated in place).

    Returns the engine's Rollout of this iteration's segments (stop reasons, tokens/s)."""
    todo = [t for g in groups for t in g.trajectories if not t.finished]
    rollout: Rollout = engine.sample([Request(tuple(t.prompt_ids), t.stream, tuple(t.tokens),
                                              budget(t, cfg), t.images) for t in todo])
    for row, t in enumerate(todo):
        n = int(rollout.action_mask[row].sum())
        t.tokens += rollout.response_ids[row, :n].tolist()
        t.logp += rollout.logp[row, :n].tolist()
        t.versions += [iteration] * n
        t.stop = rollout.stop_reason[row]
    return rollout


def split(groups: list[Group]) -> tuple[list[Group], list[Group]]:
    """(groups whose k responses have all finished, the others)."""
    return [g for g in groups if g.finished], [g for g in groups if not g.finished]


def ready(groups: list[Group], min_groups: int) -> tuple[list[Group], list[Group]]:
    """(groups to train on now, groups to keep in the buffer): the finished groups once there
    are at least `min_groups` of them; fewer wait (finished) for the next iteration's.

    With a budget, the first iteration finishes only the groups whose k responses are all
    short: training on those few alone is a large, noisy and length-biased step.
    """
    finished, unfinished = split(groups)
    return (finished, unfinished) if len(finished) >= min_groups else ([], finished + unfinished)


def to_rollout(groups: list[Group], tokenizer: Any) -> Rollout:
    """The whole responses of `groups`, grouped k by k, with the version of every token."""
    trajectories = [t for g in groups for t in g.trajectories]
    pad_id = tokenizer.pad_token_id
    prompt_ids, prompt_mask = pad([t.prompt_ids for t in trajectories], pad_id, "left")
    response_ids, action_mask = pad([t.tokens for t in trajectories], pad_id, "right")
    logp = torch.zeros(action_mask.shape, device="cpu")                                  # [B, T]
    versions = torch.full(action_mask.shape, -1, dtype=torch.long, device="cpu")         # [B, T]
    for row, t in enumerate(trajectories):
        logp[row, :len(t.logp)] = torch.tensor(t.logp, device="cpu")
        versions[row, :len(t.versions)] = torch.tensor(t.versions, dtype=torch.long, device="cpu")
    texts = [tokenizer.decode(t.tokens, skip_special_tokens=True) for t in trajectories]
    images = [t.images for t in trajectories] if any(t.images for t in trajectories) else None
    return Rollout(prompt_ids, prompt_mask, response_ids, action_mask, logp,
                   [t.stop for t in trajectories], texts=texts, versions=versions, images=images)


def loss_view(rollout: Rollout, old_segments: str, pad_id: int) -> Rollout:
    """The rollout as the loss sees it: as it is ("include"), or ("mask") with each response's
    earlier segments moved to the end of its prompt, so that only its last segment (the tokens
    of its newest policy version) is trained."""
    if old_segments == "include" or rollout.versions is None:
        return rollout
    real = rollout.action_mask.bool()                                      # [B, T]
    last = torch.where(real, rollout.versions, -1).amax(-1, keepdim=True)  # [B, 1] newest version
    old = (real & (rollout.versions < last)).sum(-1).tolist()              # [B] an old prefix
    lengths = real.sum(-1).tolist()
    contexts = [p[m.bool()].tolist() + r[:n].tolist()
                for p, m, r, n in zip(rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, old)]
    prompt_ids, prompt_mask = pad(contexts, pad_id, "left")
    response_ids, action_mask = pad([r[n:m].tolist() for r, n, m in zip(rollout.response_ids, old, lengths)],
                                    pad_id, "right")
    T = action_mask.shape[1]
    shift = [torch.nn.functional.pad(x[n:], (0, n))[:T] for x, n in zip(rollout.logp, old)]
    versions = [torch.nn.functional.pad(x[n:], (0, n), value=-1)[:T] for x, n in zip(rollout.versions, old)]
    return Rollout(prompt_ids, prompt_mask, response_ids, action_mask, torch.stack(shift) * action_mask,
                   rollout.stop_reason, texts=rollout.texts, versions=torch.stack(versions), images=rollout.images)


def segment_counts(rollout: Rollout) -> torch.Tensor:
    """[B] segments of each response: 1 + the version changes along its tokens (1 without versions).

    >>> ones = torch.ones(2, 4, dtype=torch.long)
    >>> versions = torch.tensor([[3, 3, 4, 5], [4, 4, -1, -1]])
    >>> segment_counts(Rollout(ones, ones, ones, (versions >= 0).long(), ones.float(),
    ...                        ["normal"] * 2, versions=versions)).tolist()
    [3, 1]
    """
    if rollout.versions is None:
        return torch.ones(rollout.action_mask.shape[0], dtype=torch.long, device="cpu")
    changes = (rollout.versions[:, 1:] != rollout.versions[:, :-1]) & rollout.action_mask[:, 1:].bool()
    return changes.sum(-1) + 1
