"""The mypyc-compiled engine (``make compile``): used only when current, and equal to the plain
Python in every output and every byte of state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline._compiled import STAMP, build_problem, default_build_dir
from tests.helpers import REPO

PACKAGE = REPO / "pipeline"

# Runs the engine over a mixed stream with out-of-order arrivals, merges, drop-offs and
# deadlines; prints which module ran and a digest of every output and the final state.
PROBE = """
import hashlib, json, random, sys
import pipeline.engine as engine_module
from pipeline.definitions import load_catalog
from pipeline.engine import JourneyEngine
from pipeline.simulator import scripted_touches

touches = [t for _, t in scripted_touches(11, t0=1_795_000_000_000, events=20_000,
                                          start_spread_ms=3_600_000, error_rate=0.1)]
rng = random.Random(3)
arrival = sorted(touches, key=lambda t: t.at + rng.randrange(0, 30_000))
engine = JourneyEngine(load_catalog(), allowed_lateness_ms=60_000)
outputs = []
for start in range(0, len(arrival), 500):
    outputs += engine.submit_batch(arrival[start:start + 500])
outputs += engine.advance(engine.max_event_time + 400 * 86_400_000)
digest = hashlib.sha256()
for output in outputs:
    digest.update(json.dumps(output.as_dict(), sort_keys=True, default=str).encode())
for person, raw in sorted(engine.snapshot().items()):
    digest.update(person.encode() + raw)
print(json.dumps({"module": engine_module.__file__, "outputs": len(outputs),
                  "digest": digest.hexdigest(), "late": engine.counters.late_events}))
"""


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def compiled_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The current build (``make test`` compiles it first); compiled here when missing."""
    build = default_build_dir(PACKAGE)
    if build_problem(build, PACKAGE) is None:
        return build
    build = tmp_path_factory.mktemp("compiled")
    done = subprocess.run(
        [sys.executable, "deploy/compile_core.py", "--out", str(build)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return build


def test_compiled_and_plain_engines_give_identical_outputs_and_state(
    compiled_build: Path,
) -> None:
    compiled = _run(PROBE, JW_COMPILED="1", JW_COMPILED_DIR=str(compiled_build))
    plain = _run(PROBE, JW_COMPILED="0")
    assert compiled.returncode == 0, compiled.stderr
    assert plain.returncode == 0, plain.stderr
    fast, slow = json.loads(compiled.stdout), json.loads(plain.stdout)
    assert fast["module"].endswith(".so") and fast["module"].startswith(str(compiled_build))
    assert slow["module"] == str(PACKAGE / "engine.py")
    assert slow["outputs"] > 10_000  # the stream exercises the engine
    assert fast == {**slow, "module": fast["module"]}


def test_a_build_older_than_its_sources_is_not_used(tmp_path: Path, compiled_build: Path) -> None:
    stale = tmp_path / "stale"
    stale.mkdir()
    stamp = json.loads((compiled_build / STAMP).read_text())
    stamp["sources"]["engine"] = "0" * 64  # compiled from another engine.py
    (stale / STAMP).write_text(json.dumps(stamp))
    which = "import pipeline.engine as e; print(e.__file__)"

    auto = _run(which, JW_COMPILED="auto", JW_COMPILED_DIR=str(stale))
    assert auto.returncode == 0, auto.stderr
    assert auto.stdout.strip() == str(PACKAGE / "engine.py")
    assert "pipeline/engine.py changed since the build" in auto.stderr
    assert "make compile" in auto.stderr

    required = _run(which, JW_COMPILED="1", JW_COMPILED_DIR=str(stale))
    assert required.returncode != 0
    assert "ImportError: JW_COMPILED=1 but pipeline/engine.py changed" in required.stderr


def test_compiled_required_but_missing_says_what_to_run(tmp_path: Path) -> None:
    done = _run("import pipeline.engine", JW_COMPILED="1", JW_COMPILED_DIR=str(tmp_path))
    assert done.returncode != 0
    assert f"no compiled build in {tmp_path}: run `make compile`" in done.stderr
    quiet = _run("import pipeline.engine", JW_COMPILED="auto", JW_COMPILED_DIR=str(tmp_path))
    assert quiet.returncode == 0 and quiet.stderr == ""  # no build: plain Python, no warning
