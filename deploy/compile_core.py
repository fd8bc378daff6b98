"""Compile the journey engine's hot modules with mypyc (``make compile``).

Writes the extension modules to ``build/compiled/`` (or ``--out``) with a stamp of the sources
compiled; ``pipeline/_compiled.py`` uses the build only while the stamp matches. A failed
compile leaves no build behind, so the plain modules are used.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="default: build/compiled")
    args = parser.parse_args()
    os.chdir(ROOT)  # module names come from the paths: pipeline/engine.py → pipeline.engine
    sys.path.insert(0, str(ROOT))
    from pipeline._compiled import (  # after the chdir
        COMPILED_MODULES,
        GROUP,
        STAMP,
        default_build_dir,
        source_digests,
    )

    out = (args.out or default_build_dir(ROOT / "pipeline")).resolve()
    sources = [f"pipeline/{name}.py" for name in COMPILED_MODULES]
    digests = source_digests(ROOT / "pipeline")
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    print(f"compiling {', '.join(sources)} with mypyc into {out} ...", flush=True)
    try:
        from mypyc.build import mypycify  # a build-time dependency
        from setuptools import Distribution
    except ImportError as exc:
        print(f"cannot compile: {exc} (pip install mypy setuptools)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="jw-mypyc-") as work:
        extensions = mypycify(sources, opt_level="3", group_name=GROUP, target_dir=work)
        dist = Distribution({"name": "journeywatch-core", "ext_modules": extensions})
        build_ext = dist.get_command_obj("build_ext")
        build_ext.build_lib = str(out)
        build_ext.build_temp = str(Path(work) / "temp")
        dist.verbose = False
        try:
            dist.run_command("build_ext")
        except Exception as exc:  # a compiler error: say so, leave no half build
            shutil.rmtree(out, ignore_errors=True)
            print(f"mypyc compile failed: {exc}", file=sys.stderr)
            return 1
    stamp = {"cache_tag": sys.implementation.cache_tag, "sources": digests}
    (out / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    print(f"compiled in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
