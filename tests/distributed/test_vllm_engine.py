"""The vLLM engine: skipped where vLLM (and a GPU) are absent, as on the CPU CI machine."""

from __future__ import annotations

import pytest

from openk1.rollout.vllm_engine import FINISH, stream_seed


def test_helpers_without_vllm():
    assert FINISH["stop"] == "normal" and FINISH["length"] == "max_tokens"
    seeds = {stream_seed((3, r)) for r in range(1000)}
    assert len(seeds) == 1000 and all(0 <= s < 2**31 - 1 for s in seeds)


def test_vllm_engine_interface(tiny_model_dir):
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")
    from openk1.rollout.hf import SamplingConfig
    from openk1.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(str(tiny_model_dir), SamplingConfig(max_new_tokens=5))
    rollout = engine.generate(["1+1=", "2+2="], 3, seed=0)
    assert rollout.response_ids.shape[0] == 6 and rollout.logp.shape == rollout.action_mask.shape
    assert ((rollout.logp <= 0) | (rollout.action_mask == 0)).all()
    assert set(rollout.stop_reason) <= {"normal", "max_tokens"}
