"""Python inside the sandbox: which interpreter runs programs, and which host modules they see.

Modules are bound read-only under /opt/pylib (on the program's PYTHONPATH); an interpreter
outside /usr has its prefix bound read-only at the same path.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

PYLIB_DIR = "/opt/pylib"


def default_python() -> str:
    """The interpreter programs run under: Debian's /usr/bin/python3 when present, as it needs
    nothing outside /usr; otherwise the scorer's own base interpreter."""
    if os.path.exists("/usr/bin/python3"):
        return "/usr/bin/python3"
    return os.path.realpath(os.path.join(sys.base_prefix, "bin", "python3"))


def module_paths(names: Iterable[str]) -> tuple[str, ...]:
    """Host paths (package dirs or single-module files) of the importable top-level modules
    `names`, to bind read-only into the sandbox with `Sandbox(python_modules=...)`."""
    paths = []
    for name in names:
        spec = module_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"{name} is not importable here; pip install it")
        is_pkg = spec.submodule_search_locations is not None
        paths.append(_readable_by_all(os.path.dirname(spec.origin) if is_pkg else spec.origin))
    return tuple(paths)


def module_spec(name: str) -> importlib.machinery.ModuleSpec | None:
    """importlib's spec of top-level module `name`, or None where it has none on disk: find_spec
    raises ValueError for a module already in sys.modules without a spec (Ray's import registers
    such a `colorful`), which has no path to bind."""
    try:
        return importlib.util.find_spec(name)
    except ValueError:
        return None


def _readable_by_all(path: str) -> str:
    """`path`, or a copy of it in a world-readable cache when the sandbox user (nobody) could
    not reach it, e.g. a virtualenv inside a 0700 folder such as a fresh `mktemp -d` clone."""
    parts = [path, *(str(p) for p in Path(path).parents)]
    if all(os.stat(p).st_mode & stat.S_IXOTH for p in parts if os.path.isdir(p)):
        return path
    digest = hashlib.sha256(f"{path}:{os.stat(path).st_mtime_ns}".encode()).hexdigest()[:16]
    target = (
        Path(tempfile.gettempdir()) / f"openk1-sandbox-modules-{digest}" / os.path.basename(path)
    )
    if not target.exists():
        tmp = Path(tempfile.mkdtemp(prefix=".copy-", dir=Path(tempfile.gettempdir())))
        copy = tmp / os.path.basename(path)
        (shutil.copytree if os.path.isdir(path) else shutil.copy2)(path, copy)
        for p in [tmp, *tmp.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(target.parent, 0o755)
        os.replace(copy, target)
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def python_binds(python: str, python_modules: Sequence[str]) -> list[tuple[str, str]]:
    """(host, sandbox) read-only binds: each module under PYLIB_DIR, and the interpreter's
    prefix where it lives outside /usr."""
    binds = [(path, f"{PYLIB_DIR}/{os.path.basename(path)}") for path in python_modules]
    real = os.path.realpath(python)
    if not real.startswith("/usr/"):
        prefix = os.path.dirname(os.path.dirname(real))
        binds.append((prefix, prefix))
    return binds
