"""The core (types, algo, rewards) type-checks strictly."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ["src/openk1/types.py", "src/openk1/algo", "src/openk1/rewards/base.py",
        "src/openk1/rewards/math.py", "src/openk1/rewards/length.py",
        "src/openk1/rewards/code.py", "src/openk1/sandbox", "src/openk1/memory.py"]


@pytest.mark.skipif(shutil.which("mypy") is None and not (Path(sys.executable).parent / "mypy").exists(),
                    reason="mypy not installed (pip install -e .[dev])")
def test_core_is_strictly_typed():
    mypy = Path(sys.executable).parent / "mypy"
    result = subprocess.run([str(mypy) if mypy.exists() else "mypy", "--strict", *CORE],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
