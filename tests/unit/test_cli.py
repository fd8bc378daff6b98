from __future__ import annotations

import json
from pathlib import Path

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
