from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline.settings import Settings, embedded_profile, to_environment


def test_settings_come_from_jw_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JW_PARTITIONS", "8")
    monkeypatch.setenv("JW_BROKER_URL", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("JW_PII_HASH_KEY", "s3cret")
    settings = Settings()
    assert settings.partitions == 8
    assert not settings.embedded_broker
    assert settings.pii_hash_key is not None
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize("dsn", ["chdb://./var", "postgres://x", "var/clickhouse"])
def test_misleading_clickhouse_dsns_are_refused(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JW_CLICKHOUSE_DSN", dsn)
    with pytest.raises(ValidationError, match="clickhouse_dsn"):
        Settings()


@pytest.mark.parametrize(
    "dsn", ["chdb:var/clickhouse", "chdb:///tmp/ch", "http://ch:8123", "https://u:p@ch:8443"]
)
def test_valid_clickhouse_dsns(dsn: str) -> None:
    assert Settings(clickhouse_dsn=dsn).clickhouse_dsn == dsn


def test_embedded_profile_shortens_group_timeouts_and_round_trips_through_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    child = embedded_profile(Settings(pii_hash_key="k"), "127.0.0.1:1234")
    assert child.broker_url == "127.0.0.1:1234"
    assert child.consumer_session_timeout_s == 3.0
    for name, value in to_environment(child).items():
        monkeypatch.setenv(name, value)
    assert Settings() == child
