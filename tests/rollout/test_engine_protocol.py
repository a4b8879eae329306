"""Every rollout engine is a RolloutEngine (rollout/engine.py): HFEngine, VLLMEngine,
ShardedEngine and the Ray proxy RayEngine.

Checked twice: mypy (tests/test_typecheck.py checks this file) accepts each class where a
RolloutEngine is expected (`as_engines`), and at run time each method has the Protocol's exact
signature and each instance passes `isinstance`. VLLMEngine is checked by class: vLLM is not
installed here, and its module imports vLLM only when an engine is made.
"""

from __future__ import annotations

import doctest
import inspect
from typing import TYPE_CHECKING, Any

import pytest
import torch

from openk1.distributed.rollout import ShardedEngine
from openk1.rewards.scoring import Scorer, score_many
from openk1.rollout import engine as engine_module
from openk1.rollout.engine import RolloutEngine
from openk1.rollout.hf import HFEngine, SamplingConfig
from openk1.rollout.vllm_engine import VLLMEngine

if TYPE_CHECKING:
    from openk1.stages.rl_ray import RayEngine, RayScorer

METHODS = ("sample", "generate", "load_weights", "sleep", "wake_up", "close")


def as_engines(hf: HFEngine, vllm: VLLMEngine, sharded: ShardedEngine, ray: RayEngine) -> list[RolloutEngine]:
    """Never called: mypy rejects this file if one of the classes is not a RolloutEngine."""
    return [hf, vllm, sharded, ray]


def as_scorers(ray: RayScorer) -> list[Scorer]:
    """Never called: mypy rejects this file if the default or the Ray verifier is not a Scorer."""
    return [score_many, ray]


def assert_protocol_signatures(cls: type) -> None:
    for name in METHODS:
        got = inspect.signature(getattr(cls, name), eval_str=True)
        want = inspect.signature(getattr(RolloutEngine, name), eval_str=True)
        assert got == want, f"{cls.__name__}.{name}{got}: the Protocol has {want}"


@pytest.mark.parametrize("cls", [HFEngine, VLLMEngine, ShardedEngine], ids=lambda c: c.__name__)
def test_methods_have_the_protocol_signatures(cls: type) -> None:
    assert_protocol_signatures(cls)


def test_hf_and_sharded_engines_are_rollout_engines(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    hf = HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=4))
    sharded = ShardedEngine(hf)
    assert isinstance(hf, RolloutEngine) and isinstance(sharded, RolloutEngine)
    assert sharded.tokenizer is tokenizer


def test_ray_engine_is_a_rollout_engine(tiny: tuple[Any, Any]) -> None:
    rl_ray = pytest.importorskip("openk1.stages.rl_ray")   # needs `ray`; starts no Ray
    assert_protocol_signatures(rl_ray.RayEngine)
    engine = rl_ray.RayEngine(*tiny, workers=[], colocated=False)
    try:
        assert isinstance(engine, RolloutEngine)
    finally:
        engine.close()


def test_an_engine_without_sleep_is_not_one() -> None:
    class NoSleep:
        tokenizer = None

        def sample(self, requests: list[Any]) -> None: ...
        def generate(self, prompts: list[str], samples_per_prompt: int, seed: int) -> None: ...
        def load_weights(self, state: dict[str, torch.Tensor]) -> None: ...
        def wake_up(self) -> None: ...
        def close(self) -> None: ...

    assert not isinstance(NoSleep(), RolloutEngine)


def test_hf_engine_loads_weights_and_sleeps_without_changing_samples(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    engine = ShardedEngine(HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=4)))
    before = engine.generate(["1+1="], 2, seed=0)
    engine.sleep()
    engine.wake_up()
    assert torch.equal(engine.generate(["1+1="], 2, seed=0).response_ids, before.response_ids)
    state = {k: v + 0.5 for k, v in model.state_dict().items()}
    engine.load_weights(state)                      # passed through to the HF engine's model
    assert torch.equal(model.state_dict()["lm_head.weight"], state["lm_head.weight"])
    engine.close()


def test_doctests() -> None:
    assert doctest.testmod(engine_module).failed == 0
