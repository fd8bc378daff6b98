"""Run the benchmarks and write docs/benchmarks.md.

``python -m benchmarks`` runs every suite and rewrites the file; ``python -m benchmarks
collector accuracy`` (``make bench SUITES="collector accuracy"``) runs those suites only and
replaces their sections, keeping the others with the date they were measured.
"""

from __future__ import annotations

import platform
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

from benchmarks import (
    accuracy,
    actions,
    clickhouse,
    collector,
    contract_decode,
    engine,
    scaling,
    timeline,
    topology,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SUITES: dict[str, ModuleType] = {
    "contract_decode": contract_decode,
    "engine": engine,
    "collector": collector,
    "scaling": scaling,
    "topology": topology,
    "accuracy": accuracy,
    "clickhouse": clickhouse,
    "timeline": timeline,
    "actions": actions,
}
HEADER = (
    "# Benchmarks\n\n"
    "Produced by `make bench` (`python -m benchmarks`). Throughput is reported as a ratio\n"
    "to a baseline measured in the same run, because this machine is noisy. `make bench\n"
    'SUITES="collector accuracy"` re-runs some suites and replaces only their sections; each\n'
    "section says when it was measured.\n"
)


def _sections(text: str) -> dict[str, str]:
    """The file's sections by suite name (each section ends with its suite's marker)."""
    found: dict[str, str] = {}
    for name, body in re.findall(r"(?s)(## .*?)<!-- suite: (\w+) -->\n", text):
        found[body] = name
    return found


def main(names: list[str]) -> None:
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise SystemExit(f"unknown benchmark suite(s) {unknown}; choose from {sorted(SUITES)}")
    chosen = names or list(SUITES)
    kept = _sections(DOCS.read_text()) if names and DOCS.exists() else {}
    stamp = (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"Python {platform.python_version()}, {platform.system()}"
    )
    for name in chosen:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        kept[name] = f"{SUITES[name].run()}\nMeasured {stamp}.\n"
    sections = [kept[name] + f"<!-- suite: {name} -->\n" for name in SUITES if name in kept]
    DOCS.write_text(HEADER + "\n" + "\n".join(sections))
    print(DOCS.read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
