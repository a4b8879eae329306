"""The core (types, algo, rewards) and the rollout-engine interface type-check strictly.

ENGINES: the RolloutEngine Protocol, every engine, the modules that pass one around, and
tests/rollout/test_engine_protocol.py, where mypy must accept each engine class as a
RolloutEngine and each verifier as a Scorer.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ["src/openk1/types.py", "src/openk1/algo", "src/openk1/rewards/base.py",
        "src/openk1/rewards/math.py", "src/openk1/rewards/length.py",
        "src/openk1/rewards/code.py", "src/openk1/sandbox", "src/openk1/memory.py",
        "src/openk1/padding.py"]
ENGINES = ["src/openk1/rollout/engine.py", "src/openk1/rollout/hf.py", "src/openk1/rollout/vllm_engine.py",
           "src/openk1/rollout/partial.py", "src/openk1/distributed/rollout.py",
           "src/openk1/stages/rl_ray.py", "src/openk1/curate/sampler.py",
           "tests/rollout/test_engine_protocol.py"]


@pytest.mark.skipif(shutil.which("mypy") is None and not (Path(sys.executable).parent / "mypy").exists(),
                    reason="mypy not installed (pip install -e .[dev])")
def test_core_and_engines_are_strictly_typed():
    mypy = Path(sys.executable).parent / "mypy"
    result = subprocess.run([str(mypy) if mypy.exists() else "mypy", "--strict", *CORE, *ENGINES],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
