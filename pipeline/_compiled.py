"""Use the mypyc-compiled build of the engine's hot modules when there is a current one.

``make compile`` (``deploy/compile_core.py``) compiles ``COMPILED_MODULES`` with mypyc into
``build/compiled/`` and writes a stamp with the digests of the sources it compiled. When the
``pipeline`` package is imported, that directory goes first on the package's search path if the
stamp matches the sources and this interpreter, so the compiled modules replace the plain ones.
The code is the same plain, typed Python either way; the compiled build is about 1.7 times as
fast (docs/benchmarks.md).

``JW_COMPILED`` chooses: ``auto`` (the default) uses a current build and otherwise the plain
modules (a build older than its sources is not used, and a warning says so); ``0`` always the
plain modules; ``1`` the compiled build or an ImportError (CI checks this way that the build it
tests is the compiled one). ``JW_COMPILED_DIR`` moves the build (the container image keeps it
outside the source tree).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Final

COMPILED_MODULES: Final = ("engine", "identity", "experience", "partitioning", "shard", "touch")
GROUP: Final = "journeywatch_core"  # mypyc's shared library: journeywatch_core__mypyc
STAMP: Final = "sources.json"
_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off")


def source_digests(package_dir: Path) -> dict[str, str]:
    """SHA-256 of each compiled module's source, as the stamp records them."""
    return {
        name: hashlib.sha256((package_dir / f"{name}.py").read_bytes()).hexdigest()
        for name in COMPILED_MODULES
    }


def default_build_dir(package_dir: Path) -> Path:
    configured = os.environ.get("JW_COMPILED_DIR")
    return Path(configured) if configured else package_dir.parent / "build" / "compiled"


def build_problem(build_dir: Path, package_dir: Path) -> str | None:
    """Why the build in ``build_dir`` cannot be used for ``package_dir`` (None: it can)."""
    try:
        stamp = json.loads((build_dir / STAMP).read_text())
    except FileNotFoundError:
        return f"no compiled build in {build_dir}"
    except (OSError, ValueError) as exc:
        return f"unreadable compiled build stamp {build_dir / STAMP}: {exc}"
    if stamp.get("cache_tag") != sys.implementation.cache_tag:
        return f"the compiled build in {build_dir} is for {stamp.get('cache_tag')}, not this Python"
    changed = [
        f"pipeline/{name}.py"
        for name, digest in source_digests(package_dir).items()
        if stamp.get("sources", {}).get(name) != digest
    ]
    if changed:
        return f"{', '.join(changed)} changed since the build in {build_dir} was compiled"
    return None


def activate(path: list[str]) -> list[str]:
    """The ``pipeline`` package's search path: the compiled build first when it is usable."""
    mode = os.environ.get("JW_COMPILED", "auto").strip().lower()
    if mode in _FALSE:
        return path
    package_dir = Path(path[0])
    build_dir = default_build_dir(package_dir)
    problem = build_problem(build_dir, package_dir)
    if problem is None:
        if str(build_dir) not in sys.path:
            sys.path.append(str(build_dir))  # the shared library journeywatch_core__mypyc
        return [str(build_dir / "pipeline"), *path]
    if mode in _TRUE:
        raise ImportError(f"JW_COMPILED={mode} but {problem}: run `make compile`")
    if not problem.startswith("no compiled build"):
        warnings.warn(
            f"journeywatch: {problem}; using the plain Python modules (run `make compile`)",
            RuntimeWarning,
            stacklevel=2,
        )
    return path
