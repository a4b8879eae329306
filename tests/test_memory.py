"""openk1.memory: glibc keeps freed memory for reuse (no page faults when a freed size comes back)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

# In a fresh process (the settings are process-wide): malloc 16 MiB, touch every page, free, and
# again; the second round's minor page faults say whether the memory went back to the kernel.
PROBE = """
import ctypes, json, resource, sys
from openk1.memory import keep_freed_memory
applied = keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 16 << 20
faults = []
for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    libc.free(p)
print(json.dumps({"applied": applied, "faults": faults}))
"""

linux_glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                                 reason="glibc's mallopt")


def probe(setting: str) -> dict[str, Any]:
    env = os.environ | {"OPENK1_MALLOC": setting}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@linux_glibc
def test_freed_memory_is_reused_without_page_faults() -> None:
    pages = (16 << 20) // os.sysconf("SC_PAGE_SIZE")                     # 4096 pages of 4 KiB
    kept, default = probe("keep"), probe("default")
    assert kept["applied"] is True and default["applied"] is False
    # glibc's default: the 16 MiB block is mmapped both times, every page faults again
    assert default["faults"][1] > 0.9 * pages
    # kept: the first round faults the pages in, the second reuses them
    assert kept["faults"][0] > 0.9 * pages
    assert kept["faults"][1] < 0.02 * pages
