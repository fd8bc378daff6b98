from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.contract import event_json_schema
from streams.cli import main


def test_journeys_check_accepts_the_defaults_and_names_file_and_line_of_a_bad_file(
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["journeys", "check"])
    assert (
        ok.exit_code == 0
        and "online_purchase: awareness → consideration → cart → payment" in ok.output
    )
    bad = tmp_path / "journeys.yaml"
    bad.write_text(
        "version: 1\njourneys:\n  - name: buy\n    stages: [{name: a, match: [{}], timeout: 1h}]\n"
    )
    result = runner.invoke(main, ["journeys", "check", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:3: journeys[buy].goal: Field required" in result.output


def test_worker_refuses_to_start_with_invalid_definitions(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "journeys.yaml"
    bad.write_text("version: 1\njourneys: []\n")
    monkeypatch.setenv("JW_BROKER_URL", "127.0.0.1:1")
    monkeypatch.setenv("JW_JOURNEYS_FILE", str(bad))
    result = CliRunner().invoke(main, ["worker"])
    assert result.exit_code == 1 and f"{bad}:2: journeys" in result.output


def test_invalid_settings_are_reported_by_variable_name(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("JW_PARTITIONS", "zero")
    result = CliRunner().invoke(main, ["topics"])
    assert result.exit_code == 1 and "JW_PARTITIONS" in result.output


def test_schema_command_prints_the_contract() -> None:
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0 and json.loads(result.output) == event_json_schema()


def test_map_names_the_option_it_cannot_use(tmp_path: Path) -> None:
    runner = CliRunner()
    wrong_format = runner.invoke(
        main, ["map", "--journey", "online_purchase", "--out", str(tmp_path / "map.pdf")]
    )
    assert wrong_format.exit_code == 2 and "--out" in wrong_format.output
    assert ".html, .svg, .png" in wrong_format.output
    wrong_period = runner.invoke(
        main,
        [
            "map",
            "--journey",
            "online_purchase",
            "--compare",
            "7d",
            "--out",
            str(tmp_path / "m.svg"),
        ],
    )
    assert wrong_period.exit_code == 2 and "SINCE..UNTIL" in wrong_period.output
    unreachable = runner.invoke(
        main,
        [
            "map",
            "--journey",
            "online_purchase",
            "--api",
            "http://127.0.0.1:9",
            "--out",
            str(tmp_path / "m.svg"),
        ],
    )
    assert unreachable.exit_code == 1 and "cannot reach journeywatch" in unreachable.output
    assert not (tmp_path / "m.svg").exists()


def test_map_periods_read_dates_times_and_durations() -> None:
    from datetime import UTC, datetime

    import pytest

    from pipeline.journeymap import parse_when

    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert parse_when("7d", now) == datetime(2026, 11, 16, 12, 0, tzinfo=UTC)
    assert parse_when("now", now) == now
    assert parse_when("2026-11-02", now) == datetime(2026, 11, 2, tzinfo=UTC)
    assert parse_when("2026-11-02T09:30+01:00", now).astimezone(UTC).hour == 8
    with pytest.raises(ValueError, match="not a time"):
        parse_when("last tuesday", now)


def test_run_names_the_ports_in_use_and_their_settings_before_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from tests.helpers import free_port

    ports = {
        name: free_port()
        for name in ("STATUS", "WORKER_WEB", "COLLECTOR", "EMBEDDED_BROKER", "PROMETHEUS")
    }
    for name, port in ports.items():
        monkeypatch.setenv(f"JW_{name}_PORT", str(port))
    monkeypatch.setenv("JW_ALERTMANAGER_PORT", str(free_port()))
    monkeypatch.setenv("JW_DATA_DIR", str(tmp_path / "var"))
    with socket.socket() as held, socket.socket() as held_too:
        held.bind(("127.0.0.1", ports["STATUS"]))
        held.listen()
        held_too.bind(("127.0.0.1", ports["COLLECTOR"]))
        held_too.listen()
        result = CliRunner().invoke(main, ["run"])
    assert result.exit_code == 1
    assert f"{ports['STATUS']} (JW_STATUS_PORT, the live page)" in result.output
    assert f"{ports['COLLECTOR']} (JW_COLLECTOR_PORT, the collector)" in result.output
    assert "JW_WORKER_WEB_PORT" not in result.output  # free: not named
    assert not (tmp_path / "var").exists()  # nothing started, nothing written


def test_run_refuses_a_data_directory_another_run_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second run on other ports but the same JW_DATA_DIR would clear the first's worker
    state and open its ClickHouse directory: it stops first, naming the other run."""
    import fcntl

    from tests.helpers import free_port

    for name in ("STATUS", "WORKER_WEB", "COLLECTOR", "EMBEDDED_BROKER", "PROMETHEUS"):
        monkeypatch.setenv(f"JW_{name}_PORT", str(free_port()))
    monkeypatch.setenv("JW_ALERTMANAGER_PORT", str(free_port()))
    data = tmp_path / "var"
    monkeypatch.setenv("JW_DATA_DIR", str(data))
    state = data / "faust-worker-0"
    state.mkdir(parents=True)
    with open(data / "run.lock", "a+") as first_run:
        fcntl.flock(first_run, fcntl.LOCK_EX | fcntl.LOCK_NB)
        first_run.write("4242\n")
        first_run.flush()
        result = CliRunner().invoke(main, ["run"])
    assert result.exit_code == 1
    assert f"another journeywatch run (pid 4242) uses {data}" in result.output
    assert "JW_DATA_DIR" in result.output
    assert state.exists()  # the other run's worker state is left alone


def test_journeys_check_lists_the_segments_with_their_rules(tmp_path: Path) -> None:
    good = tmp_path / "journeys.yaml"
    good.write_text(
        "version: 1\njourneys:\n  - name: buy\n"
        "    stages: [{name: cart, match: [{touchpoint: 'cart.*'}], timeout: 1h}]\n"
        "    goal: [{touchpoint: order.placed}]\n"
        "segments:\n"
        "  - {name: gold, match: {attributes: {tier: [gold, platinum]}}}\n"
        "  - {name: eu_stores, match: {channel: [store], attributes: {region: EU}}}\n"
        "  - {name: norway, match: {attributes: {country: NO}}}\n"
    )
    result = CliRunner().invoke(main, ["journeys", "check", str(good)])
    assert result.exit_code == 0, result.output
    assert "segment gold: tier in gold, platinum\n" in result.output
    assert "segment eu_stores: channel in store and region in EU\n" in result.output
    # YAML's NO is false: said, as the rule compares it, with what to do
    assert "segment norway: country in false\n" in result.output
    assert "warning: segment norway: country compares with true/false" in result.output
    assert "quote a value meant as text ('NO')" in result.output
