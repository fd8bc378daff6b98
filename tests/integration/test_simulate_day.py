"""`journeywatch simulate --day`: every event of the day reaches Kafka, with its ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from pipeline.scenario import DaySimulator, default_incidents
from pipeline.settings import Settings
from streams.broker import EmbeddedBroker
from streams.topics import RAW, ensure_topics
from tests.helpers import jw_env, read_topic, run_cli

pytestmark = pytest.mark.integration


def test_a_simulated_day_goes_to_kafka_with_its_ground_truth(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    ensure_topics(Settings(broker_url=broker.url, partitions=2))
    truth = tmp_path / "truth.jsonl"
    args = [
        "simulate",
        "--day",
        "2026-11-02",
        "--personas",
        "300",
        "--incidents",
        "all",
        "--seed",
        "5",
        "--ground-truth",
        str(truth),
    ]
    result = run_cli(args, jw_env(broker_url=broker.url))
    assert result.returncode == 0, result.stderr
    records = [orjson.loads(r.value) for r in read_topic(broker.url, RAW)]
    # The same day, generated here: the topic holds exactly its events.
    start = 1_793_577_600_000  # 2026-11-02T00:00:00Z
    expected = DaySimulator(5, start, 300, default_incidents(start)).generate()
    assert sorted(r["event_id"] for r in records) == sorted(e["event_id"] for e in expected)
    assert f"{len(expected)} events from 300 personas" in result.stdout
    lines = [json.loads(line) for line in truth.read_text().splitlines()]
    journeys = [line for line in lines if line["type"] == "journey"]
    assert len(journeys) >= 300 and {
        "journey",
        "person",
        "outcome",
        "stage",
        "negative_moments",
    } <= set(journeys[0])
    assert any(line["type"] == "identity_link" for line in lines)
