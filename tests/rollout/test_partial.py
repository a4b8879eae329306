"""Partial rollouts: segments across iterations, staleness bound, buffer state, loss view."""

import json

import torch

from openk1.models.forward import response_logprobs, tokenize
from openk1.rollout import partial
from openk1.rollout.hf import HFEngine, SamplingConfig
from openk1.types import Rollout

PROMPTS = ["12+3=", "7+845=", "1+1=", "99+1="]


def run_iterations(engine, tokenizer, cfg, late_prompts=(), buffer=None, start=0, stop_after=None):
    """Iterations of the RL loop's rollout part: groups 0-1 start at iteration 0, group 2-3
    (different prompts, another seed) join at iteration 1. Returns finished groups, buffer."""
    ids = tokenize(tokenizer, PROMPTS)
    buffer = buffer or partial.ReplayBuffer()
    finished = []
    for iteration in range(start, 20):
        if iteration == 0:
            buffer.groups += partial.new_groups([0, 1], ids[:2], 3, seed=11)
        if iteration == 1:
            buffer.groups += partial.new_groups([2, 3], ids[2:], 3, seed=12)
        partial.advance(engine, buffer.groups, iteration, cfg)
        done, buffer.groups = partial.split(buffer.groups)
        finished += done
        if stop_after is not None and iteration == stop_after or not buffer.groups:
            break
    return finished, buffer


def by_problem(groups):
    return {g.problem: g.trajectories for g in groups}


def test_response_over_several_iterations_equals_one_go(tiny):
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=24, batch_size=4))
    cfg = partial.PartialConfig(enabled=True, segment_tokens=5, max_segments=10)
    finished, _ = run_iterations(engine, tokenizer, cfg)
    one_go = {0: engine.generate(PROMPTS[:2], 3, seed=11), 2: engine.generate(PROMPTS[2:], 3, seed=12)}
    groups = by_problem(finished)
    assert sorted(groups) == [0, 1, 2, 3]
    segments = []
    for p, trajectories in groups.items():
        reference, offset = one_go[p - p % 2], 3 * (p % 2)
        start = 0 if p < 2 else 1                                   # iteration it joined
        for j, t in enumerate(trajectories):
            row = offset + j
            n = int(reference.lengths[row])
            assert t.tokens == reference.response_ids[row, :n].tolist()
            # segments decoded across iterations vs in one go: ~200 ulps of log-probs up to ~5
            # (measured <= 4.8e-7 with AMX / AVX2 / default kernels)
            assert torch.allclose(torch.tensor(t.logp), reference.logp[row, :n], atol=1e-4)
            assert t.stop == reference.stop_reason[row]
            # 5 tokens per iteration: token i was sampled at iteration start + i // 5
            assert t.versions == [start + i // 5 for i in range(n)]
            segments.append(t.segments)
    assert max(segments) == 5 and min(segments) >= 1          # 24 tokens = 5 segments of <= 5


def test_staleness_bound_finishes_the_last_segment(tiny):
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=24))
    cfg = partial.PartialConfig(enabled=True, segment_tokens=3, max_segments=2)
    finished, buffer = run_iterations(engine, tokenizer, cfg)
    assert not buffer.groups
    trajectories = [t for g in finished for t in g.trajectories]
    assert all(t.segments <= 2 and t.stop in ("normal", "max_tokens") for t in trajectories)
    long = [t for t in trajectories if len(t.tokens) > 3]
    assert long and all(t.versions[:3] == [t.versions[0]] * 3 and t.versions[3] == t.versions[0] + 1
                        for t in long)
    assert any(len(t.tokens) == 24 for t in long)               # second segment ran to the end


def test_buffer_state_round_trips_through_json(tiny):
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=24))
    cfg = partial.PartialConfig(enabled=True, segment_tokens=4, max_segments=10)
    full, _ = run_iterations(engine, tokenizer, cfg)
    first, buffer = run_iterations(engine, tokenizer, cfg, stop_after=1)      # "interrupted"
    assert buffer.groups and any(t.stop == "budget" for g in buffer.groups for t in g.trajectories)
    restored = partial.ReplayBuffer()
    restored.load_state_dict(json.loads(json.dumps(buffer.state_dict())))
    assert restored.state_dict() == buffer.state_dict()      # float32 log-probs survive JSON
    rest, _ = run_iterations(engine, tokenizer, cfg, buffer=restored, start=2)
    assert [partial.asdict(g) for g in first + rest] == [partial.asdict(g) for g in full]


def test_loss_view_trains_each_responses_last_segment():
    """Prompt [5, 6]. Row 0: [7, 8, 9] sampled at iterations 0, 0, 1 -> trains [9] after the
    context [5, 6, 7, 8]. Row 1: [3] at iteration 1. Row 2: [7, 8] sampled at iteration 0 and
    finished then, its group waiting until iteration 1 -> trains [7, 8] (masking every token
    sampled before the training iteration would give this early-finishing response no gradient).
    Row 3: [4, 5] at iterations 0, 1 -> trains [5]. "include" trains everything."""
    rollout = Rollout(torch.tensor([[0, 5, 6], [5, 6, 4], [0, 5, 6], [0, 5, 6]]),
                      torch.tensor([[0, 1, 1], [1, 1, 1], [0, 1, 1], [0, 1, 1]]),
                      torch.tensor([[7, 8, 9], [3, 0, 0], [7, 8, 0], [4, 5, 0]]),
                      torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 0]]),
                      torch.tensor([[-0.1, -0.2, -0.3], [-0.4, 0.0, 0.0], [-0.5, -0.6, 0.0],
                                    [-0.7, -0.8, 0.0]]), ["normal"] * 4,
                      versions=torch.tensor([[0, 0, 1], [1, -1, -1], [0, 0, -1], [0, 1, -1]]))
    assert partial.loss_view(rollout, "include", 0) is rollout
    view = partial.loss_view(rollout, "mask", pad_id=0)
    assert view.prompt_ids.tolist() == [[5, 6, 7, 8], [0, 5, 6, 4], [0, 0, 5, 6], [0, 5, 6, 4]]
    assert view.prompt_mask.tolist() == [[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]]
    assert view.response_ids.tolist() == [[9, 0], [3, 0], [7, 8], [5, 0]]
    assert view.action_mask.tolist() == [[1, 0], [1, 0], [1, 1], [1, 0]]
    assert torch.equal(view.logp, torch.tensor([[-0.3, 0.0], [-0.4, 0.0], [-0.5, -0.6], [-0.8, 0.0]]))
    assert view.versions.tolist() == [[1, -1], [1, -1], [0, 0], [1, -1]]
    assert int(view.action_mask.sum(-1).min()) >= 1            # every response gets a gradient


def test_loss_view_scores_the_new_tokens_as_the_whole_response_does(tiny):
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=16))
    cfg = partial.PartialConfig(enabled=True, segment_tokens=6, max_segments=10)
    finished, _ = run_iterations(engine, tokenizer, cfg)
    rollout = partial.to_rollout(finished, tokenizer)
    view = partial.loss_view(rollout, "mask", tokenizer.pad_token_id)
    whole = response_logprobs(model, rollout.prompt_ids, rollout.prompt_mask,
                              rollout.response_ids, rollout.action_mask).detach()
    masked = response_logprobs(model, view.prompt_ids, view.prompt_mask,
                               view.response_ids, view.action_mask).detach()
    newest = torch.where(rollout.action_mask.bool(), rollout.versions, -1).amax(-1, keepdim=True)
    new = rollout.action_mask.bool() & (rollout.versions == newest)   # each row's last segment
    assert int(new.sum()) == int(view.action_mask.sum()) > 0
    assert bool((new.sum(-1) > 0).all())                               # every response trains
    assert torch.allclose(whole[new], masked[view.action_mask.bool()], atol=1e-4)   # as above
    assert torch.allclose(rollout.logp[new], view.logp[view.action_mask.bool()])


def test_carried_tokens_record_the_sampling_policy_and_current_recomputes_them(tiny):
    """A carried token's recorded log-prob is that of the policy that sampled it (iteration
    0's): the weights change between the two segments and the recorded values follow the
    sampling policy. That is the regulariser's reference under `old_logp: sampled`; under
    `current` (the default) `current_logp` replaces it by the training iteration's."""
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=16))
    cfg = partial.PartialConfig(enabled=True, segment_tokens=4, max_segments=4)
    groups = partial.new_groups([0], tokenize(tokenizer, PROMPTS[:1]), 2, seed=5)
    partial.advance(engine, groups, 0, cfg)
    with torch.no_grad():                                   # the update between iterations
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    partial.advance(engine, groups, 1, cfg)
    rollout = partial.to_rollout(groups, tokenizer)
    assert partial.loss_view(rollout, "include", tokenizer.pad_token_id) is rollout
    new_policy = response_logprobs(model, rollout.prompt_ids, rollout.prompt_mask,
                                   rollout.response_ids, rollout.action_mask).detach()
    carried = rollout.action_mask.bool() & (rollout.versions == 0)
    fresh = rollout.action_mask.bool() & (rollout.versions == 1)
    assert int(carried.sum()) == 8 and int(fresh.sum()) > 0
    # fp32 rounding of one forward against the other (|logp| ~ 5): 1e-4; the update moves them
    # by far more, so the carried tokens' recorded values are the old policy's
    assert torch.allclose(rollout.logp[fresh], new_policy[fresh], atol=1e-4)
    assert (rollout.logp[carried] - new_policy[carried]).abs().max() > 1e-2
    # old_logp "current" (the default): the carried tokens' reference is recomputed under the
    # policy of the iteration that trains them, pi_theta_1; this iteration's tokens keep theirs
    from openk1.stages.rl import RLConfig, current_logp

    reference, gap = current_logp(model, rollout, 1, RLConfig(partial=cfg))
    assert gap["logp/recomputed_gap_abs"] > 0   # the carried tokens' reference did change
    assert torch.allclose(reference.logp[carried], new_policy[carried], atol=1e-4)
    assert torch.equal(reference.logp[fresh], rollout.logp[fresh])
    assert torch.equal(reference.logp[~rollout.action_mask.bool()], rollout.logp[~rollout.action_mask.bool()])
    assert current_logp(model, rollout, 0, RLConfig(partial=cfg)) == (rollout, {})   # nothing carried yet


def test_finished_groups_wait_until_there_are_enough():
    def group(problem, stops):
        return partial.Group(problem, [partial.Trajectory([1], (0, j), [2], stop=s) for j, s in enumerate(stops)])

    done_a, done_b = group(0, ["normal", "repeat"]), group(1, ["max_tokens", "normal"])
    open_c = group(2, ["normal", "budget"])
    assert partial.ready([done_a, open_c, done_b], 3) == ([], [done_a, done_b, open_c])   # 2 < 3: all wait
    assert partial.ready([done_a, open_c, done_b], 2) == ([done_a, done_b], [open_c])
    assert partial.ready([open_c], 1) == ([], [open_c])
