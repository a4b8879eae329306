"""The vLLM engine with a real vLLM: skipped where vLLM or a GPU is absent (as on the CPU CI
machine). Its CPU tests run against a fake `vllm` (tests/rollout/test_vllm_fakes.py); the full
GPU check is scripts/gpu_check_vllm.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from openk1.rollout.vllm_engine import FINISH, request_seed, stream_seed


def test_helpers_without_vllm() -> None:
    from openk1.rollout.engine import Request

    assert FINISH == {"stop": "normal", "length": "max_tokens"}   # anything else raises
    seeds = {stream_seed((3, r)) for r in range(1000)}
    assert len(seeds) == 1000 and all(0 <= s < 2**31 - 1 for s in seeds)
    continued = {request_seed(Request((1,), (3, 0), (7,) * n)) for n in range(50)}
    assert len(continued) == 50   # a continuation does not replay its first segment's random numbers


def small_model(folder: Path) -> Path:
    """A random Llama vLLM's attention kernels take (head size 64)."""
    from openk1.models.io import save_model
    from openk1.models.tiny import TinyModelConfig, char_tokenizer, tiny_llama

    tokenizer = char_tokenizer()
    size = TinyModelConfig(hidden=128, layers=2, heads=2, kv_heads=2, intermediate=256, max_positions=2048)
    save_model(tiny_llama(size, tokenizer, seed=0), tokenizer, folder)
    return folder


def test_vllm_engine_on_a_gpu(tmp_path: Path) -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]', on a GPU machine)")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")
    from openk1.rollout.hf import SamplingConfig
    from openk1.rollout.vllm_engine import VLLMEngine, VLLMSettings

    settings = VLLMSettings(gpu_memory_utilization=0.3, max_model_len=1024)
    engine = VLLMEngine(str(small_model(tmp_path / "model")), SamplingConfig(max_new_tokens=5), settings)
    rollout = engine.generate(["1+1=", "2+2="], 3, seed=0)
    assert rollout.response_ids.shape[0] == 6 and rollout.logp.shape == rollout.action_mask.shape
    assert rollout.logp.dtype == torch.float32 and ((rollout.logp <= 0) | (rollout.action_mask == 0)).all()
    assert set(rollout.stop_reason) <= {"normal", "max_tokens"}
    engine.sleep()
    engine.wake_up()
    assert torch.equal(engine.generate(["1+1=", "2+2="], 3, seed=0).response_ids, rollout.response_ids)
