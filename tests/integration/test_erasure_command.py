"""``journeywatch erase`` without ``--api`` (ClickHouse opened by the command itself) on a real
broker and chdb: an e-mail address given raw is hashed as the collector hashes it, the
person's rows go, an ``erase`` control record with the identifier keys (never the raw
address) lands on every partition of touchpoints.by_person, the audit row is written."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipeline.pii import hash_email
from pipeline.settings import Settings
from streams.broker import EmbeddedBroker
from streams.topics import BY_PERSON, CONTROL_HEADER, ensure_topics
from tests.helpers import jw_env, query_chdb, read_topic, run_cli

pytestmark = pytest.mark.integration

EMAIL = "Jane.Cli@Example.com"


def test_erase_by_a_raw_e_mail_from_the_command(broker: EmbeddedBroker, tmp_path: Path) -> None:
    chdb = tmp_path / "clickhouse"
    env = jw_env(
        broker_url=broker.url,
        partitions=3,
        clickhouse_dsn=f"chdb://{chdb}",
        pii_hash_key="cli-key",
        data_dir=tmp_path / "var",
    )
    ensure_topics(Settings(broker_url=broker.url, partitions=3))
    assert run_cli(["migrate"], env).returncode == 0
    email_hash = hash_email(EMAIL, b"cli-key")
    query_chdb(
        chdb,
        "INSERT INTO journeywatch.touchpoints (event_id, occurred_at, received_at, channel, "
        "touchpoint, customer_id, email_hash) VALUES "
        f"('e1', now64(3), now64(3), 'web', 'home.view', 'jane-cli', '{email_hash}'), "
        "('e2', now64(3), now64(3), 'web', 'home.view', 'bob-cli', 'other-hash')",
    )
    result = run_cli(["erase", "--identifier", f"email:{EMAIL}", "--wait-s", "0"], env)
    assert result.returncode == 0, result.stderr
    record = orjson.loads(result.stdout)
    assert record["identifiers"] == 2 and record["partitions_told"] == 3
    assert record["rows_deleted"]["touchpoints"] == 1
    assert query_chdb(chdb, "SELECT customer_id FROM journeywatch.touchpoints") == [["bob-cli"]]
    audit = query_chdb(chdb, "SELECT requested_by, rows_deleted FROM journeywatch.erasures")
    assert audit[0][0] == "cli"
    controls = [
        r for r in read_topic(broker.url, BY_PERSON) if (CONTROL_HEADER, b"erase") in r.headers
    ]
    assert sorted(r.partition for r in controls) == [0, 1, 2]
    for r in controls:
        assert orjson.loads(r.value) == {
            "erase": sorted(["customer_id:jane-cli", f"email_hash:{email_hash}"])
        }
        assert EMAIL.lower().encode() not in r.value.lower()
