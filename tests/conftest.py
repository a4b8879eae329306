"""Shared fixtures: a tiny random model saved the way `openk1 init-model` saves it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torch.compile's on-disk cache is not keyed on a forced ATEN_CPU_CAPABILITY (the way to check
# the suite under other CPUs' kernels): kernels cached under one would be loaded under another
if os.environ.get("ATEN_CPU_CAPABILITY"):
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(
        tempfile.gettempdir(), f"torchinductor_openk1_{os.environ['ATEN_CPU_CAPABILITY']}"))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from openk1.models.io import save_model
    from openk1.models.tiny import TinyModelConfig, char_tokenizer, tiny_llama

    path = tmp_path_factory.mktemp("tiny") / "model"
    tokenizer = char_tokenizer()
    size = TinyModelConfig(hidden=32, layers=2, heads=2, kv_heads=2, intermediate=64)
    save_model(tiny_llama(size, tokenizer, seed=0), tokenizer, path)
    return path


@pytest.fixture()
def tiny(tiny_model_dir: Path):
    from openk1.models.io import load_model

    return load_model(tiny_model_dir)


@pytest.fixture()
def refuse_sandbox_runs(monkeypatch: pytest.MonkeyPatch):
    """`refuse_sandbox_runs(what)`: code-test generation (rewards/code_tests.py) gets a sandbox
    pool whose every run fails the test with "<what> was run", and no generator sandbox."""
    from openk1.rewards import code_tests

    def refuse(what: str) -> None:
        class NoRuns:   # stands in for the sandbox pool: any run is a failure
            def __init__(self, *args: object) -> None:
                pass

            def __enter__(self) -> NoRuns:
                return self

            def __exit__(self, *exc: object) -> None:
                pass

            def map(self, jobs: object) -> object:
                raise AssertionError(f"{what} was run")

        monkeypatch.setattr(code_tests, "SandboxPool", NoRuns)
        monkeypatch.setattr(code_tests, "generator_sandbox", lambda modules: None)

    return refuse
