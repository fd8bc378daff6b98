from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from streams.broker import EmbeddedBroker
from tests.helpers import ClickHouse, free_port

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

# In CI (CI=true) the property tests draw the same examples on every run, so a submission's
# result does not depend on the draw; locally they draw new ones each run and keep exploring
# (a failure prints the example to pin with @example).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``plain_engine`` are deselected (not skipped) when the compiled engine is
    active; ``make test`` runs them in its plain unit pass (JW_COMPILED=0)."""
    import pipeline.engine

    if pipeline.engine.__file__ is None or pipeline.engine.__file__.endswith(".py"):
        return
    kept = [item for item in items if item.get_closest_marker("plain_engine") is None]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A real Kafka-protocol broker (Tansu) on a free loopback port, fresh for each test."""
    with EmbeddedBroker(free_port(), tmp_path / "broker.log") as running:
        yield running


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one chdb directory this pytest process may open (chdb: one per process)."""
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture()
def clickhouse(chdb_dir: Path, request: pytest.FixtureRequest) -> Iterator[ClickHouse]:
    """An in-process ClickHouse client and a fresh database name for this test."""
    from sinks.clickhouse.client import connect

    client = connect(f"chdb://{chdb_dir}")
    database = "t_" + "".join(ch if ch.isalnum() else "_" for ch in request.node.name)[:60]
    client.command(f"DROP DATABASE IF EXISTS {database}")
    yield client, database
    client.command(f"DROP DATABASE IF EXISTS {database}")
