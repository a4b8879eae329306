"""VLLMEngine (rollout/vllm_engine.py) on CPU, against a fake `vllm` module put in sys.modules.

The fake records every call the engine makes and behaves as vLLM 0.11's V1 engine does where
that matters here: `collective_rpc` takes a method name (a function would go through msgpack),
level 1 sleep backs the weights up and frees them, level 2 discards them, a sleep while any tag
sleeps does nothing, `wake_up()` while the weights are awake maps them twice (an error), and
writing weights or generating while they are freed is an error. What a fake cannot show (real
kernels, memory, log-prob values) is scripts/gpu_check_vllm.py's.
"""

from __future__ import annotations

import math
import os
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from openk1.models.prompting import stop_ids
from openk1.rollout import vllm_engine
from openk1.rollout.engine import Request, RolloutEngine
from openk1.rollout.hf import SamplingConfig
from openk1.rollout.repeat import RepeatConfig, first_repeat
from openk1.rollout.vllm_engine import (
    RECEIVER,
    EngineStateError,
    MissingLogprobError,
    VLLMEngine,
    VLLMSettings,
    WeightReceiver,
    WeightsVersionError,
    check_vllm_version,
    repeat_points,
    request_seed,
)

START = {"layer.weight": torch.zeros(2, 3), "layer.bias": torch.zeros(3)}


# ---------------------------------------------------------------- the fake vLLM


@dataclass
class Logprob:
    logprob: float


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None
    stop_reason: int | str | None = None


@dataclass
class Result:
    outputs: list[Completion]


class SamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def __getattr__(self, name: str) -> Any:
        return self.kwargs[name]


def tokens_prompt(**kwargs: Any) -> dict[str, Any]:
    return dict(kwargs)


class FakeModel:
    def __init__(self) -> None:
        self.params = {k: v.clone() for k, v in START.items()}
        self.pushes = 0

    def load_weights(self, weights: Any) -> None:
        for name, value in weights:
            self.params[name].copy_(value)
        self.pushes += 1


class FakeWorker(WeightReceiver):
    """vLLM's worker class with the extension mixed in (worker_extension_cls)."""

    def __init__(self) -> None:
        self.model = FakeModel()
        self.pid = os.getpid()

    def get_model(self) -> FakeModel:
        return self.model

    def openk1_pid(self) -> int:
        return self.pid


def completion(ids: list[int], finish: str | None = "length", stop_reason: int | str | None = None,
               logp: float = -0.5) -> Completion:
    return Completion(ids, [{t: Logprob(logp - 0.01 * i)} for i, t in enumerate(ids)], finish, stop_reason)


class FakeLLM:
    """Records calls; weights and sleep as vLLM 0.11 (module doc)."""

    def __init__(self, model: str, **kwargs: Any) -> None:
        self.model, self.kwargs = model, kwargs
        self.multiprocessing = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        self.worker = FakeWorker()
        self.calls: list[tuple[Any, ...]] = []
        self.sleeping: set[str] = set()
        self.backup: dict[str, torch.Tensor] | None = None
        self.params: list[Any] = []
        self.script: Callable[[list[int], Any], Completion] = lambda prompt, p: completion([5] * p.max_tokens)

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        return self.worker.model.params

    def collective_rpc(self, method: Any, timeout: float | None = None, args: tuple[Any, ...] = (),
                       kwargs: dict[str, Any] | None = None) -> list[Any]:
        if not isinstance(method, str):
            raise TypeError("msgpack cannot serialise a function (VLLM_ALLOW_INSECURE_SERIALIZATION)")
        self.calls.append(("rpc", method))
        if method == "openk1_load_weights" and "weights" in self.sleeping:
            raise RuntimeError("write to unmapped weight memory")
        return [getattr(self.worker, method)(*args, **(kwargs or {}))]

    def sleep(self, level: int = 1) -> None:
        self.calls.append(("sleep", level))
        if self.sleeping:          # vLLM 0.11's executor: "already sleeping", nothing done
            return
        self.backup = {k: v.clone() for k, v in self.weights.items()} if level == 1 else None
        for value in self.weights.values():
            value.fill_(math.nan)  # freed
        self.sleeping = {"weights", "kv_cache"}

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.calls.append(("wake_up", None if tags is None else tuple(tags)))
        if tags is None and "weights" not in self.sleeping and self.sleeping:
            raise RuntimeError("cuMemMap: the weights are mapped already")
        for tag in tags or sorted(self.sleeping):
            if tag not in self.sleeping:
                return             # vLLM: "Tag is not in sleeping tags", nothing done
        for tag in tags or sorted(self.sleeping):
            self.sleeping.discard(tag)
            if tag == "weights":
                for name, value in self.weights.items():
                    value.copy_(self.backup[name] if self.backup is not None else torch.randn_like(value))

    def reset_prefix_cache(self) -> None:
        self.calls.append(("reset_prefix_cache",))

    def generate(self, prompts: list[dict[str, Any]], params: list[SamplingParams],
                 use_tqdm: bool = True) -> list[Result]:
        if self.sleeping:
            raise RuntimeError("generate while asleep")
        self.calls.append(("generate", len(prompts)))
        self.params = params
        return [Result([self.script(p["prompt_token_ids"], sp)]) for p, sp in zip(prompts, params)]


@pytest.fixture()
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("vllm")
    inputs = types.ModuleType("vllm.inputs")
    module.__version__ = "0.11.0"                  # type: ignore[attr-defined]
    module.LLM = FakeLLM                           # type: ignore[attr-defined]
    module.SamplingParams = SamplingParams         # type: ignore[attr-defined]
    inputs.TokensPrompt = tokens_prompt            # type: ignore[attr-defined]
    module.inputs = inputs                         # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")   # restored after the test
    return module


def make(path: Path, **sampling: Any) -> VLLMEngine:
    return VLLMEngine(str(path), SamplingConfig(**({"max_new_tokens": 8} | sampling)))


def ids(engine: VLLMEngine, text: str) -> list[int]:
    return [int(engine.tokenizer.convert_tokens_to_ids(c)) for c in text]


# ---------------------------------------------------------------- construction


def test_llm_is_made_in_process_with_the_receiver(fake_vllm: Any, tiny_model_dir: Path) -> None:
    engine = make(tiny_model_dir, temperature=0.7, batch_size=16)
    llm = engine.llm
    assert llm.multiprocessing == "0" and llm.model == str(tiny_model_dir)
    assert {
        "worker_extension_cls": RECEIVER, "enable_sleep_mode": True, "logprobs_mode": "processed_logprobs",
        "distributed_executor_backend": "uni", "tensor_parallel_size": 1, "max_num_seqs": 16,
        "dtype": "bfloat16"}.items() <= llm.kwargs.items()
    assert RECEIVER.rsplit(".", 1)[1] == WeightReceiver.__name__
    assert engine.exact_logp is False and engine.state == "awake" and engine.version == 0
    assert isinstance(engine, RolloutEngine)


def test_a_worker_in_another_process_is_refused(fake_vllm: Any, tiny_model_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeWorker, "openk1_pid", lambda self: os.getpid() + 1)
    with pytest.raises(EngineStateError, match="VLLM_ENABLE_V1_MULTIPROCESSING=0"):
        make(tiny_model_dir)


@pytest.mark.parametrize("version", ["0.10.2", "0.35.0", "1.0.0"])
def test_versions_outside_the_pinned_range_are_refused(fake_vllm: Any, tiny_model_dir: Path, version: str) -> None:
    fake_vllm.__version__ = version
    with pytest.raises(EngineStateError, match=rf"vLLM {version} is installed; .*vllm>=0\.11\.0,<0\.35"):
        make(tiny_model_dir)


def test_version_range_matches_pyproject() -> None:
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert 'vllm = ["vllm>=0.11,<0.35"]' in text
    for inside in ("0.11.0", "0.11.2", "0.32.0", "0.34.0rc1", "0.34.1+cu130"):
        check_vllm_version(inside)


def test_sampling_keys(fake_vllm: Any, tiny_model_dir: Path) -> None:
    class Extra(SamplingConfig):
        min_p: float = 0.0

    with pytest.raises(ValueError, match=r"sampling key\(s\) min_p are not supported by the vLLM engine"):
        VLLMEngine(str(tiny_model_dir), Extra(min_p=0.1))
    VLLMEngine(str(tiny_model_dir), Extra())                        # a new key at its default: harmless
    # every key HFEngine takes is honoured or knowingly ignored (a new one must be decided on)
    assert set(SamplingConfig.model_fields) == vllm_engine.HONOURED | vllm_engine.IGNORED
    # HFEngine's decoder choices are accepted and change nothing vLLM is asked
    plain = make(tiny_model_dir, lean=True, continuous_batching=True)
    other = make(tiny_model_dir, lean=False, continuous_batching=False)
    assert plain.llm.kwargs == other.llm.kwargs


# ---------------------------------------------------------------- weights and versions


def test_weight_push_in_place_and_monotone_versions(fake_vllm: Any, tiny_model_dir: Path) -> None:
    engine = make(tiny_model_dir)
    state = {k: v + 1.0 for k, v in START.items()}
    engine.load_versioned(state, 3)
    assert all(torch.equal(engine.llm.weights[k], state[k]) for k in state) and engine.version == 3
    assert engine.llm.calls[-2:] == [("rpc", "openk1_load_weights"), ("reset_prefix_cache",)]
    engine.load_versioned(state, 3)                                 # the same version again: allowed
    with pytest.raises(WeightsVersionError, match="version 2 offered, version 3 held"):
        engine.load_versioned({k: v + 9.0 for k, v in START.items()}, 2)
    assert torch.equal(engine.llm.weights["layer.bias"], state["layer.bias"]) and engine.version == 3
    engine.load_weights({k: v + 2.0 for k, v in START.items()})     # the Protocol's: next version
    assert engine.version == 4 and float(engine.llm.weights["layer.bias"][0]) == 2.0


def test_receiver_refuses_serialised_weights() -> None:
    worker = FakeWorker()
    with pytest.raises(TypeError, match="layer.bias arrived as list, not a tensor"):
        worker.openk1_load_weights([("layer.bias", [0.0, 1.0, 2.0])], 1)   # type: ignore[list-item]
    assert worker.openk1_load_weights([("layer.bias", torch.ones(3))], 7) == 7
    assert torch.equal(worker.model.params["layer.bias"], torch.ones(3))


# ---------------------------------------------------------------- sleep / wake


def test_sleep_state_machine(fake_vllm: Any, tiny_model_dir: Path) -> None:
    engine = make(tiny_model_dir)
    llm = engine.llm
    engine.wake_up()                                                # awake already: nothing
    engine.sleep()
    engine.sleep()                                                  # asleep already: nothing
    assert engine.state == "asleep" and [c for c in llm.calls if c[0] != "rpc"] == [("sleep", 1)]
    with pytest.raises(EngineStateError, match="asleep, not awake: call wake_up"):
        engine.generate(["1+1="], 1, seed=0)

    state = {k: v + 1.0 for k, v in START.items()}
    engine.load_versioned(state, 1)                                 # wakes the weights only
    assert engine.state == "weights" and llm.sleeping == {"kv_cache"}
    assert llm.calls[-2:] == [("wake_up", ("weights",)), ("rpc", "openk1_load_weights")]
    with pytest.raises(EngineStateError, match="weights, not awake"):
        engine.generate(["1+1="], 1, seed=0)
    engine.load_versioned({k: v + 2.0 for k, v in START.items()}, 2)   # half awake: pushed directly
    assert llm.calls[-1] == ("rpc", "openk1_load_weights") and engine.state == "weights"

    engine.wake_up()                                                # the KV cache only
    assert engine.state == "awake" and not llm.sleeping and llm.calls[-1] == ("wake_up", ("kv_cache",))
    assert engine.generate(["1+1="], 2, seed=0).response_ids.shape[0] == 2
    assert float(llm.weights["layer.bias"][0]) == 2.0

    engine.sleep()                                                  # level 1 keeps the push
    engine.wake_up()
    assert llm.calls[-2:] == [("sleep", 1), ("wake_up", None)]
    assert float(llm.weights["layer.bias"][0]) == 2.0


def test_sleep_from_half_awake_frees_the_weights(fake_vllm: Any, tiny_model_dir: Path) -> None:
    """vLLM 0.11 would ignore a sleep while the KV cache sleeps: the KV cache wakes first."""
    engine = make(tiny_model_dir)
    engine.sleep()
    engine.load_versioned({k: v + 3.0 for k, v in START.items()}, 1)
    engine.sleep()
    llm = engine.llm
    assert engine.state == "asleep" and llm.sleeping == {"weights", "kv_cache"}
    assert llm.calls[-2:] == [("wake_up", ("kv_cache",)), ("sleep", 1)]
    assert llm.backup is not None and float(llm.backup["layer.bias"][0]) == 3.0
    engine.wake_up()
    assert float(llm.weights["layer.bias"][0]) == 3.0


def test_sleep_level_two_is_refused(fake_vllm: Any, tiny_model_dir: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="sleep level 2 discards the weights"):
        VLLMSettings(sleep_level=2)
    with pytest.raises(ValueError, match="only level 1 keeps the weights"):
        VLLMEngine(str(tiny_model_dir), SamplingConfig(), VLLMSettings.model_construct(sleep_level=2))


def test_level_two_would_lose_a_push_made_awake() -> None:
    """Why level 2 is refused, on the fake: its weights wake up as garbage."""
    llm = FakeLLM("m")
    llm.collective_rpc("openk1_load_weights", args=([("layer.bias", torch.full((3,), 4.0))], 1))
    llm.sleep(level=2)
    llm.wake_up()
    assert not torch.equal(llm.weights["layer.bias"], torch.full((3,), 4.0))


# ---------------------------------------------------------------- sampling parameters


def test_sampling_params_per_request(fake_vllm: Any, tiny_model_dir: Path) -> None:
    engine = make(tiny_model_dir, temperature=0.7, top_p=0.9, max_new_tokens=10, stop=["\n\n", "##"])
    requests = [Request((1, 20), (4, 0)), Request((1, 20), (4, 1)), Request((1, 21), (4, 2), (30, 31), budget=3)]
    engine.sample(requests)
    params = [p.kwargs for p in engine.llm.params]
    for p in params:
        assert p["stop_token_ids"] == stop_ids(engine.tokenizer) and p["stop"] == ["\n\n", "##"]
        assert p["include_stop_str_in_output"] is True and p["skip_special_tokens"] is False
        assert p["logprobs"] == 0 and p["n"] == 1 and p["temperature"] == 0.7 and p["top_p"] == 0.9
    assert [p["max_tokens"] for p in params] == [10, 10, 3]
    assert [p["seed"] for p in params] == [request_seed(r) for r in requests]
    assert len({p["seed"] for p in params}) == 3
    engine.sample(requests[1:2])                                    # a request's seed is its own
    assert engine.llm.params[0].kwargs["seed"] == params[1]["seed"]
    assert engine.llm.calls[-1] == ("generate", 1)


def test_nothing_to_sample_is_refused(fake_vllm: Any, tiny_model_dir: Path) -> None:
    engine = make(tiny_model_dir, max_new_tokens=4)
    with pytest.raises(ValueError, match="nothing to sample: prefix 4"):
        engine.sample([Request((1,), (0, 0), (5, 5, 5, 5))])


# ---------------------------------------------------------------- log-probs


def test_logp_is_float32_and_exact_where_given(fake_vllm: Any, tiny_model_dir: Path) -> None:
    engine = make(tiny_model_dir)
    engine.llm.script = lambda prompt, p: completion([7, 8, 9][: 1 + len(prompt) % 3], logp=-1.25)
    rollout = engine.sample([Request((1, 2), (0, 0)), Request((1, 2, 3), (0, 1))])
    assert rollout.logp.dtype == torch.float32
    assert rollout.logp[0].tolist() == pytest.approx([-1.25, -1.26, -1.27])
    assert rollout.logp[1].tolist() == [-1.25, 0.0, 0.0] and rollout.action_mask[1].tolist() == [1, 0, 0]


@pytest.mark.parametrize("broken", ["none", "short", "absent", "nan", "none_step"])
def test_a_missing_logprob_raises(fake_vllm: Any, tiny_model_dir: Path, broken: str) -> None:
    engine = make(tiny_model_dir)

    def script(prompt: list[int], p: Any) -> Completion:
        out = completion([7, 8, 9])
        assert out.logprobs is not None
        if broken == "none":
            out.logprobs = None
        elif broken == "short":
            out.logprobs = out.logprobs[:2]
        elif broken == "absent":
            out.logprobs[1] = {99: Logprob(-0.1)}
        elif broken == "nan":
            out.logprobs[2] = {9: Logprob(math.nan)}
        else:
            out.logprobs[0] = None   # type: ignore[call-overload]
        return out

    engine.llm.script = script
    with pytest.raises(MissingLogprobError):
        engine.sample([Request((1, 2), (0, 0))])


# ---------------------------------------------------------------- stop reasons


def test_stop_reasons_and_budgets(fake_vllm: Any, tiny_model_dir: Path) -> None:
    engine = make(tiny_model_dir, max_new_tokens=10)
    eos = engine.tokenizer.eos_token_id
    scripted = {
        0: completion([7, eos], "stop"),                      # EOS
        1: completion([7, 8], "stop", stop_reason="##"),      # stop string
        2: completion([7] * 10, "length"),                    # max_new_tokens
        3: completion([7] * 3, "length"),                     # budget 3 < room 10
        4: completion([7] * 2, "length"),                     # prefix 8: room 2 < budget 5
        5: completion([7] * 4, "length"),                     # max_model_len, not the budget (6)
    }
    engine.llm.script = lambda prompt, p: scripted[prompt[1]]
    requests = [Request((1, 0), (0, 0)), Request((1, 1), (0, 1)), Request((1, 2), (0, 2)),
                Request((1, 3), (0, 3), budget=3), Request((1, 4), (0, 4), (7,) * 8, budget=5),
                Request((1, 5), (0, 5), budget=6)]
    rollout = engine.sample(requests)
    assert rollout.stop_reason == ["normal", "normal", "max_tokens", "budget", "max_tokens", "max_tokens"]
    assert rollout.action_mask.sum(1).tolist() == [2, 2, 10, 3, 2, 4]
    assert rollout.response_ids[0, 1] == eos                  # the EOS is kept (and trained)


@pytest.mark.parametrize("finish", ["abort", None, "error"])
def test_an_unknown_finish_reason_raises(fake_vllm: Any, tiny_model_dir: Path, finish: str | None) -> None:
    engine = make(tiny_model_dir)
    engine.llm.script = lambda prompt, p: completion([7, 8], finish)
    with pytest.raises(EngineStateError, match="finished a request with reason"):
        engine.sample([Request((1, 2), (0, 0))])


REPEAT = RepeatConfig(enabled=True, max_period=4, min_repeats=4, min_tokens=12)


def test_repeat_points_agree_with_the_whole_sequence_rule() -> None:
    rows = [list(b"ab12+12+12+12+12+12+xyz"), list(b"7+6=13 c1\n0+5+1=6 c0"), list(b"+12+12+12+")]
    prefixes: list[tuple[int, ...]] = [(), (), tuple(b"0012+12")]
    points = repeat_points(REPEAT, prefixes, rows)
    assert points[0] == first_repeat(rows[0], 4, 4, 12) == 13 and points[1] is None
    whole = first_repeat(list(prefixes[2]) + rows[2], 4, 4, 12)
    assert whole is not None and points[2] == whole - len(prefixes[2])
    # a prefix that already repeats never stops the continuation (HFEngine's detector has fired)
    assert repeat_points(REPEAT, [tuple(b"12+" * 6)], [list(b"12+12+")]) == [None]
    assert repeat_points(RepeatConfig(), [()], [rows[0]]) == [None]


def test_repeat_truncates_the_response_and_its_logprobs(fake_vllm: Any, tiny_model_dir: Path) -> None:
    engine = make(tiny_model_dir, max_new_tokens=40, repeat=REPEAT)
    loop = ids(engine, "ab" + "12+" * 10)                     # fires at index 13, as above
    eos = engine.tokenizer.eos_token_id
    scripted = {
        0: completion(loop, "length"),
        1: completion(loop[:14], "stop", stop_reason=eos),    # the repeat's token is a stop id: normal
        2: completion(loop[:14], "stop", stop_reason="+"),    # ... a stop string: repeat
    }
    engine.llm.script = lambda prompt, p: scripted[prompt[1]]
    rollout = engine.sample([Request((1, k), (0, k)) for k in range(3)])
    assert rollout.stop_reason == ["repeat", "normal", "repeat"]
    assert rollout.action_mask.sum(1).tolist() == [14, 14, 14]
    assert rollout.response_ids[0, :14].tolist() == loop[:14]
    assert rollout.logp[0, 13] == pytest.approx(-0.5 - 0.13) and rollout.logp[0, 14:].eq(0).all()


def test_a_stop_string_begun_in_the_prefix_ends_the_response(fake_vllm: Any, tiny_model_dir: Path) -> None:
    engine = make(tiny_model_dir, max_new_tokens=20, stop=["##END"])
    prefix = tuple(ids(engine, "so ##E"))
    engine.llm.script = lambda prompt, p: completion(ids(engine, "ND and more"), "length")
    rollout = engine.sample([Request((1, 2), (0, 0), prefix)])
    assert rollout.stop_reason == ["normal"] and rollout.action_mask.sum().item() == 2
    assert rollout.texts == ["ND"]
    # without the prefix, nothing ends early: vLLM matches stop strings within the response itself
    assert engine.sample([Request((1, 2), (0, 0))]).stop_reason == ["max_tokens"]


def test_colocated_rollout_worker_wakes_only_what_it_needs(fake_vllm: Any, tiny_model_dir: Path) -> None:
    """stages/rl_ray.py's RolloutWorker: a push wakes the weights only; a rollout the KV cache."""
    rl_ray = pytest.importorskip("openk1.stages.rl_ray")   # needs `ray`; starts no Ray
    worker = rl_ray.RolloutWorker("vllm", str(tiny_model_dir), SamplingConfig(max_new_tokens=4),
                                  VLLMSettings(), True)
    engine, llm = worker.engine, worker.engine.llm
    assert engine.state == "asleep"
    worker.load_weights({k: v + 5.0 for k, v in START.items()}, 2)
    assert engine.state == "weights" and engine.version == 2
    mark = len(llm.calls)
    worker.sample([Request((1, 2), (0, 0))], 2)
    assert llm.calls[mark:] == [("wake_up", ("kv_cache",)), ("generate", 1), ("sleep", 1)]
    with pytest.raises(rl_ray.StaleWeightsError, match="version 1 offered"):
        worker.load_weights(START, 1)
    engine.wake_up()
    assert float(llm.weights["layer.bias"][0]) == 5.0


def test_doctests() -> None:
    import doctest

    assert doctest.testmod(vllm_engine).failed == 0
