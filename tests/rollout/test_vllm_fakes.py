"""VLLMEngine (rollout/vllm_engine.py) on CPU, against a fake `vllm` module put in sys.modules.

The fake records every call the engine makes and behaves as vLLM 0.11's V1 engine does where
that matters here: `collective_rpc` takes a method name (a function would go through msgpack),
level 1 sleep backs the weights up and frees them, level 2 discards them, a sleep while any tag
sleeps does nothing, `wake_up()` while the weights are awake maps them twice (an error), and
writing weights or generating while they are freed is an error. For a LLaVA folder it processes
image prompts as vLLM's multi-modal processor does with token prompts: each image's first
`<image>` id replaced by the image's feature tokens, counted from the vision config (llava.py
`_get_prompt_updates`), the expanded ids returned as `prompt_token_ids`. What a fake cannot show
(real kernels, memory, log-prob values) is scripts/gpu_check_vllm.py's.
"""

from __future__ import annotations

import json
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
from PIL import Image

from openk1.data.images import ImageRef, resolve_image
from openk1.errors import OpenK1Error
from openk1.models.io import processor_of
from openk1.models.prompting import stop_ids
from openk1.models.tiny import TinyModelConfig, char_tokenizer
from openk1.models.vision import save_vision_model, tiny_vlm
from openk1.rollout import vllm_engine
from openk1.rollout.engine import Request, RolloutEngine, requests_for
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
    prompt_token_ids: list[int]


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
        self.prompts: list[dict[str, Any]] = []
        self.image_id, self.image_tokens = image_layout(Path(model))
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
        self.params, self.prompts = params, prompts
        expanded = [self.processed(p) for p in prompts]
        return [Result([self.script(ids, sp)], ids) for ids, sp in zip(expanded, params)]

    def processed(self, prompt: dict[str, Any]) -> list[int]:
        """vLLM's processing of a token prompt: each image replaces the next `<image>` id by
        `image_tokens` of them; too few placeholders is an error (`_validate_mm_placeholders`)."""
        ids = list(prompt["prompt_token_ids"])
        images = prompt.get("multi_modal_data", {}).get("image", [])
        out: list[int] = []
        at = 0
        for image in images:
            assert isinstance(image, Image.Image) and image.mode == "RGB"
            if self.image_id not in ids[at:]:
                raise RuntimeError(f"Expected there to be {len(images)} prompt placeholders")
            start = ids.index(self.image_id, at)
            out += ids[at:start] + [self.image_id] * self.image_tokens
            at = start + 1
        return out + ids[at:]


def image_layout(path: Path) -> tuple[int, int]:
    """(image token id, feature tokens per image) of a LLaVA folder as vLLM computes them: CLIP's
    (image_size / patch_size)^2 + CLS, less CLS for the `default` feature selection; (-1, 0) for a
    text model (or a made-up path)."""
    config_file = path / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if "vision_config" not in config:
        return -1, 0
    vision = config["vision_config"]
    tokens = (vision["image_size"] // vision["patch_size"]) ** 2 + 1
    return int(config["image_token_index"]), tokens - (config["vision_feature_select_strategy"] == "default")


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


# ---------------------------------------------------------------- images (LLaVA)


SMALL = TinyModelConfig(hidden=32, layers=2, heads=2, kv_heads=2, intermediate=64)
TOKENS = 16   # one <image> of the tiny VLM: (32 / 8)^2 feature tokens (CLS dropped)


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vlm") / "model"
    save_vision_model(*tiny_vlm(SMALL, char_tokenizer(), seed=0), path)
    return path


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> list[ImageRef]:
    """Three random PNGs of different sizes (two RGBA: the engine must give vLLM RGB)."""
    folder = tmp_path_factory.mktemp("pictures")
    refs = []
    for seed, (mode, h, w) in enumerate([("RGB", 36, 40), ("RGBA", 32, 32), ("RGBA", 20, 48)]):
        g = torch.Generator(device="cpu").manual_seed(seed)
        pixels = torch.randint(0, 256, (h, w, len(mode)), generator=g, dtype=torch.uint8, device="cpu")
        Image.fromarray(pixels.numpy(), mode).save(folder / f"p{seed}.png")
        refs.append(resolve_image(f"p{seed}.png", folder, f"p{seed}"))
    return refs


def same_pixels(image: Any, ref: ImageRef) -> bool:
    """`image` is the PNG of `ref`, decoded to RGB, pixel for pixel."""
    with Image.open(ref.source) as png:
        return bool(image.mode == "RGB" and image.size == png.size
                    and image.tobytes() == png.convert("RGB").tobytes())


def image_requests(engine: VLLMEngine, pictures: list[ImageRef], k: int = 1) -> list[Request]:
    """k samples each of: two images (given in reverse file order), a text prompt, one image."""
    prompts = ["<image> then <image>: same?", "1+1=", "<image>2+2="]
    images = [(pictures[1], pictures[0]), (), (pictures[2],)]
    return requests_for(engine.tokenizer, prompts, k, seed=3, images=images)


def test_image_requests_reach_vllm_as_multi_modal_data(fake_vllm: Any, vlm_dir: Path,
                                                      pictures: list[ImageRef]) -> None:
    engine = make(vlm_dir)
    assert processor_of(engine.tokenizer) is not None                 # prompt_tokens can expand <image>
    image_id = engine.llm.image_id
    requests = image_requests(engine, pictures)
    assert [r.prompt_ids.count(image_id) for r in requests] == [2 * TOKENS, 0, TOKENS]
    rollout = engine.sample(requests)
    sent = engine.llm.prompts
    assert "multi_modal_data" not in sent[1] and sent[1]["prompt_token_ids"] == list(requests[1].prompt_ids)
    for row in (0, 2):
        images = sent[row]["multi_modal_data"]["image"]
        assert set(sent[row]) == {"prompt_token_ids", "multi_modal_data"}
        assert len(images) == len(requests[row].images)
        assert all(same_pixels(i, ref) for i, ref in zip(images, requests[row].images))   # in order
        ids = sent[row]["prompt_token_ids"]                           # one placeholder per image ...
        assert ids.count(image_id) == len(images)
        assert engine.llm.processed(sent[row]) == list(requests[row].prompt_ids)   # ... vLLM's expansion
    assert rollout.prompt_ids[0, -len(requests[0].prompt_ids):].tolist() == list(requests[0].prompt_ids)
    assert rollout.images == [r.images for r in requests]


def test_a_continued_segment_carries_its_images(fake_vllm: Any, vlm_dir: Path, pictures: list[ImageRef]) -> None:
    engine = make(vlm_dir, max_new_tokens=12)
    image_id = engine.llm.image_id
    first = image_requests(engine, pictures)[0]
    prefix = (7, image_id, 8)                                         # a sampled <image> stays a token
    segment = Request(first.prompt_ids, first.stream, prefix, budget=4, images=first.images)
    rollout = engine.sample([segment])
    sent = engine.llm.prompts[0]
    assert [same_pixels(i, ref) for i, ref in zip(sent["multi_modal_data"]["image"], first.images)] == [True] * 2
    assert sent["prompt_token_ids"][-3:] == [7, image_id, 8]
    assert sent["prompt_token_ids"].count(image_id) == 3
    assert engine.llm.processed(sent) == list(first.prompt_ids + prefix)
    assert rollout.images == [first.images] and rollout.prompt_ids[0].tolist()[-3:] == [7, image_id, 8]


def test_each_image_is_decoded_once_per_call(fake_vllm: Any, vlm_dir: Path, pictures: list[ImageRef],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make(vlm_dir)
    read: list[str] = []
    load = vllm_engine.load_image
    monkeypatch.setattr(vllm_engine, "load_image", lambda ref: read.append(ref.digest) or load(ref))
    requests = image_requests(engine, pictures, k=4)                  # 4 samples, 3 distinct images
    requests.append(Request(requests[8].prompt_ids, (3, 12), (5,), images=requests[8].images))   # continued
    engine.sample(requests)
    assert sorted(read) == sorted(p.digest for p in pictures)
    shown = [p["multi_modal_data"]["image"][0] for p in engine.llm.prompts if "multi_modal_data" in p]
    assert len(shown) == 4 + 4 + 1 and len({id(i) for i in shown[4:]}) == 1   # one object for the k + segment
    engine.sample(requests[:4])                                       # the next call reads its images again
    assert len(read) == 3 + 2


def test_vllm_must_expand_images_as_the_processor_does(fake_vllm: Any, vlm_dir: Path,
                                                       pictures: list[ImageRef]) -> None:
    engine = make(vlm_dir)
    engine.llm.image_tokens = TOKENS + 1                              # vLLM would count another size
    expanded = r"row 0: .* 2 image\(s\) to 48 prompt tokens, the model's processor to 46"
    with pytest.raises(EngineStateError, match=expanded):
        engine.sample(image_requests(engine, pictures)[:2])
    engine.llm.image_tokens = TOKENS
    broken = image_requests(engine, pictures)[2]
    with pytest.raises(OpenK1Error, match="image 0: no run of 16 image tokens"):
        engine.sample([Request(broken.prompt_ids[:-8], (0, 0), images=broken.images)])   # cut short


def test_images_need_a_vision_language_model(fake_vllm: Any, tiny_model_dir: Path, pictures: list[ImageRef]) -> None:
    engine = make(tiny_model_dir)
    assert processor_of(engine.tokenizer) is None
    with pytest.raises(OpenK1Error, match="needs a vision-language model"):
        engine.sample([Request((1, 2), (0, 0), images=(pictures[0],))])


def test_doctests() -> None:
    import doctest

    assert doctest.testmod(vllm_engine).failed == 0
