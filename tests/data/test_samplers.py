import json
from collections import Counter

import pytest

from openk1.config import build
from openk1.data.samplers import (
    CurriculumSampler,
    PrioritizedSampler,
    SamplerConfig,
    UniformSampler,
    difficulty_rank,
    make_sampler,
    sampler_metrics,
)
from openk1.errors import OpenK1Error
from openk1.types import Problem


def problems_with(difficulties, **extra):
    return [Problem(prompt=f"{i}+1=", answer=str(i + 1), id=f"p{i}", difficulty=d,
                    extra=dict(extra)) for i, d in enumerate(difficulties)]


def config(**values):
    return build(SamplerConfig, values)


# ---- uniform ---------------------------------------------------------------------------------

def test_uniform_sampler_unchanged():
    # recorded from the UniformSampler before curriculum/prioritized sampling were added
    sampler = UniformSampler(7, 3)
    assert [sampler.sample(i, 3) for i in range(5)] == [
        [4, 3, 2], [6, 5, 0], [1, 3, 0], [5, 6, 2], [4, 1, 5]]
    sampler = UniformSampler(4, 0)
    assert [sampler.sample(i, 6) for i in range(2)] == [[2, 3, 0, 1, 0, 1], [3, 2, 2, 0, 3, 1]]
    assert sampler.probabilities(0) == [0.25] * 4
    assert sampler_metrics(sampler, 0) == pytest.approx(
        {"sampler/effective_problems": 4.0, "sampler/max_prob": 0.25})


# ---- prioritized: the formula ----------------------------------------------------------------

def test_prioritized_probabilities_hand_computed():
    # weights max(1 - s, 0.05) = [1, 0.5, 0.05], total 1.55
    sampler = PrioritizedSampler([0.0, 0.5, 1.0], seed=0, floor=0.05)
    assert sampler.probabilities(0) == pytest.approx([1 / 1.55, 0.5 / 1.55, 0.05 / 1.55], rel=1e-12)
    # restricted to {1, 2}: [0, 0.5, 0.05] / 0.55
    assert sampler.probabilities(0, [1, 2]) == pytest.approx([0.0, 0.5 / 0.55, 0.05 / 0.55],
                                                             rel=1e-12)


def test_floor_lifts_small_weights_and_zero_floor_follows_the_report():
    # 1 - 0.99 = 0.01 < floor 0.05 -> weights [0.05, 1.0], total 1.05
    assert PrioritizedSampler([0.99, 0.0], 0, floor=0.05).probabilities(0) == pytest.approx(
        [0.05 / 1.05, 1.0 / 1.05], rel=1e-12)
    # floor 0: P ∝ 1 - s exactly: [0, 0.5] / 0.5
    assert PrioritizedSampler([1.0, 0.5], 0, floor=0.0).probabilities(0) == [0.0, 1.0]
    # floor 0 and everything solved: uniform rather than 0/0
    assert PrioritizedSampler([1.0, 1.0], 0, floor=0.0).probabilities(0) == [0.5, 0.5]


def test_zero_weight_problems_are_drawn_last():
    sampler = PrioritizedSampler([1.0, 0.5, 1.0, 0.0], seed=0, floor=0.0)
    for iteration in range(50):
        assert set(sampler.sample(iteration, 2)) == {1, 3}
        assert set(sampler.sample(iteration, 4)[:2]) == {1, 3}


def test_single_draw_frequencies_match_probabilities():
    # p = [20, 10, 1] / 31; 20000 draws -> standard error <= 0.0034, tolerance 0.01
    sampler = PrioritizedSampler([0.0, 0.5, 1.0], seed=1, floor=0.05)
    counts = Counter(sampler.sample(i, 1)[0] for i in range(20000))
    assert [counts[i] / 20000 for i in range(3)] == pytest.approx([20 / 31, 10 / 31, 1 / 31],
                                                                  abs=0.01)


def test_draws_without_replacement_follow_successive_sampling():
    # two of p = [20, 10, 1] / 31: problem 2 is left out when 0 and 1 come first, in either order:
    # P(out) = (20/31)(10/11) + (10/31)(20/21) = 0.58651 + 0.30722 = 0.89373 -> P(in) = 0.10627
    sampler = PrioritizedSampler([0.0, 0.5, 1.0], seed=2, floor=0.05)
    draws = [sampler.sample(i, 2) for i in range(10000)]
    assert all(len(set(d)) == 2 for d in draws)
    assert sum(2 in d for d in draws) / 10000 == pytest.approx(0.10627, abs=0.01)
    with pytest.raises(OpenK1Error, match="only 3 problems"):
        sampler.sample(0, 4)


def test_running_mean_and_ema_updates():
    mean = PrioritizedSampler([0.5, 0.5], seed=0)
    mean.update([0], [1.0])          # first observation replaces the prior: s = 1
    assert mean.success.tolist() == [1.0, 0.5]
    mean.update([0], [0.0])          # (1 + 0) / 2
    assert mean.success.tolist() == [0.5, 0.5]
    assert mean.counts.tolist() == [2, 0]
    ema = PrioritizedSampler([0.5, 0.5], seed=0, ema=0.25)
    ema.update([1, 1], [1.0, 0.0])   # 0.5 + 0.25 (1 - 0.5) = 0.625; 0.625 * 0.75 = 0.46875
    assert ema.success.tolist() == [0.5, 0.46875]
    with pytest.raises(ValueError, match="must lie in"):
        ema.update([0], [1.5])


def test_priors_come_from_prior_or_pass_rate():
    problems = problems_with([1, 2]) + [Problem(prompt="x", answer="1", id="q",
                                                extra={"pass_rate": 0.2})]
    sampler = make_sampler(config(kind="prioritized", prior=0.7), problems, seed=0)
    assert sampler.success.tolist() == [0.7, 0.7, 0.2]
    sampler = make_sampler(config(kind="prioritized", prior_from_pass_rate=False), problems, 0)
    assert sampler.success.tolist() == [0.5, 0.5, 0.5]
    with pytest.raises(OpenK1Error, match="problem p0: pass_rate must be"):
        make_sampler(config(kind="prioritized"), problems_with([1], pass_rate=2.0), 0)


def test_prioritized_is_deterministic_under_seed():
    priors = [i / 50 for i in range(50)]
    a, b, c = (PrioritizedSampler(priors, seed) for seed in (0, 0, 1))
    assert [a.sample(i, 10) for i in range(5)] == [b.sample(i, 10) for i in range(5)]
    assert [a.sample(i, 10) for i in range(5)] != [c.sample(i, 10) for i in range(5)]
    assert a.sample(0, 10) != a.sample(1, 10)


# ---- curriculum --------------------------------------------------------------------------------

def test_curriculum_switches_at_the_configured_iteration():
    problems = problems_with([1, 2, 3, 4, 5, 1, 2, 3, 4, 5])
    cfg = config(kind="curriculum", stages=[{"start_iteration": 0},
                                            {"start_iteration": 24, "min_difficulty": 4}])
    sampler = make_sampler(cfg, problems, seed=0)
    hard = {3, 4, 8, 9}
    early = {i for it in range(24) for i in sampler.sample(it, 3)}
    assert early == set(range(10))                      # every problem in the first stage
    assert sampler.probabilities(23) == [0.1] * 10
    for it in range(24, 40):
        assert set(sampler.sample(it, 3)) <= hard
    assert sampler.probabilities(24) == [0.25 if i in hard else 0.0 for i in range(10)]
    assert sampler_metrics(sampler, 24)["sampler/stage"] == 1.0
    # uniform within a stage: epochs counted from its start, every hard problem before repeats
    assert sorted(sampler.sample(24, 2) + sampler.sample(25, 2)) == sorted(hard)


def test_curriculum_epochs_start_with_the_stage():
    # iterations 5..8 are the stage's first 4 draws of 1: one whole epoch over its 4 problems
    for seed in range(5):
        sampler = CurriculumSampler(7, [(0, [0, 1, 2]), (5, [3, 4, 5, 6])], seed=seed)
        assert sorted(i for it in range(5, 9) for i in sampler.sample(it, 1)) == [3, 4, 5, 6]


def test_curriculum_with_priorities_is_a_composition():
    problems = problems_with([1, 1, 2, 2])
    cfg = config(kind="curriculum+prioritized", floor=0.05,
                 stages=[{"start_iteration": 0}, {"start_iteration": 5, "min_difficulty": 2}])
    sampler = make_sampler(cfg, problems, seed=0)
    sampler.update([0, 2], [1.0, 0.5])           # s = [1, 0.5, 0.5, 0.5] -> w = [.05, .5, .5, .5]
    assert sampler.probabilities(4) == pytest.approx([0.05 / 1.55, 0.5 / 1.55, 0.5 / 1.55,
                                                      0.5 / 1.55], rel=1e-12)
    sampler.update([3], [0.0])                   # stage 2: w = [0, 0, 0.5, 1] / 1.5
    assert sampler.probabilities(5) == pytest.approx([0.0, 0.0, 1 / 3, 2 / 3], rel=1e-12)
    assert all(set(sampler.sample(it, 2)) == {2, 3} for it in range(5, 10))


def test_difficulty_labels_rank_by_the_configured_order():
    assert difficulty_rank("hard", ["easy", "medium", "hard"]) == 2.0
    assert (difficulty_rank(3, []), difficulty_rank(2.5, []), difficulty_rank("4", [])) == (
        3.0, 2.5, 4.0)
    problems = problems_with(["easy", "hard", "medium", "easy"])
    cfg = config(kind="curriculum", difficulty_order=["easy", "medium", "hard"],
                 stages=[{"start_iteration": 0, "max_difficulty": "easy"},
                         {"start_iteration": 3, "min_difficulty": "medium"}])
    sampler = make_sampler(cfg, problems, seed=0)
    assert [i for start, allowed in sampler.stages for i in allowed] == [0, 3, 1, 2]
    with pytest.raises(OpenK1Error, match=r"problem p1: difficulty 'expert' is neither"):
        make_sampler(cfg, problems_with(["easy", "expert"]), 0)
    with pytest.raises(OpenK1Error, match="problem p0: difficulty None"):
        make_sampler(cfg, problems_with([None]), 0)


def test_curriculum_config_and_stage_errors():
    with pytest.raises(OpenK1Error, match="needs `stages`"):
        config(kind="curriculum")
    with pytest.raises(OpenK1Error, match="begin at 0 and increase"):
        config(kind="curriculum", stages=[{"start_iteration": 0}, {"start_iteration": 0}])
    with pytest.raises(OpenK1Error, match="unknown key"):
        config(kind="uniform", temperature=1.0)
    cfg = config(kind="curriculum", stages=[{"start_iteration": 0, "min_difficulty": 9}])
    with pytest.raises(OpenK1Error, match="has no problems"):
        make_sampler(cfg, problems_with([1, 2]), 0)
    with pytest.raises(OpenK1Error, match="must begin at 0"):
        CurriculumSampler(2, [(1, [0])], seed=0)


# ---- checkpoints ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["uniform", "curriculum", "prioritized", "curriculum+prioritized"])
def test_resume_from_state_dict_samples_as_uninterrupted(kind):
    problems = problems_with([1 + i % 4 for i in range(12)])
    cfg = config(kind=kind, ema=0.5 if kind == "prioritized" else None,
                 stages=[{"start_iteration": 0}, {"start_iteration": 6, "min_difficulty": 3}])

    def step(sampler, it):
        indices = sampler.sample(it, 4)
        sampler.update(indices, [((i * 7 + it) % 5) / 4 for i in indices])
        return indices, sampler.probabilities(it)

    straight = make_sampler(cfg, problems, seed=3)
    expected = [step(straight, it) for it in range(10)]
    first = make_sampler(cfg, problems, seed=3)
    for it in range(4):
        step(first, it)
    resumed = make_sampler(cfg, problems, seed=3)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert [step(resumed, it) for it in range(4, 10)] == expected[4:]
    assert resumed.state_dict() == straight.state_dict()


def test_state_for_other_data_is_refused():
    sampler = PrioritizedSampler([0.5, 0.5], seed=0)
    with pytest.raises(OpenK1Error, match="tracks 3 problems but the data has 2"):
        sampler.load_state_dict(PrioritizedSampler([0.5] * 3, 0).state_dict())
    problems = problems_with([1, 2])
    cfg = config(kind="curriculum+prioritized", stages=[{"start_iteration": 0}])
    uniform_state = make_sampler(config(), problems, 0).state_dict()
    with pytest.raises(OpenK1Error, match="resume with the sampler.kind"):
        make_sampler(cfg, problems, 0).load_state_dict(uniform_state)


def test_docstring_examples():
    import doctest

    from openk1.data import samplers

    result = doctest.testmod(samplers)
    assert result.attempted >= 5 and result.failed == 0
