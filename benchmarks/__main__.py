"""Run every benchmark and write docs/benchmarks.md."""

from __future__ import annotations

import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import accuracy, collector, contract_decode, engine, scaling, topology

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SUITES = [contract_decode, engine, collector, scaling, topology, accuracy]


def main() -> None:
    sections = []
    for suite in SUITES:
        print(f"running {suite.__name__} ...", file=sys.stderr, flush=True)
        sections.append(suite.run())
    header = (
        "# Benchmarks\n\n"
        "Produced by `make bench` (`python -m benchmarks`). Throughput is reported as a ratio\n"
        "to a baseline measured in the same run, because this machine is noisy.\n\n"
        f"Last run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"Python {platform.python_version()}, {platform.system()}.\n"
    )
    DOCS.write_text(header + "\n" + "\n".join(sections))
    print(DOCS.read_text())


if __name__ == "__main__":
    main()
