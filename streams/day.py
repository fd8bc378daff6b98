"""``journeywatch simulate --day``: a simulated day with its ground truth, into Kafka or
through the collector."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import click
import orjson

from pipeline.scenario import INCIDENT_KINDS, DaySimulator, GroundTruth, default_incidents
from pipeline.settings import Settings
from streams.producer import raw_producer
from streams.topics import RAW


def parse_incidents(text: str) -> list[str]:
    if text == "all":
        return list(INCIDENT_KINDS)
    if text == "none":
        return []
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(chosen) - set(INCIDENT_KINDS))
    if unknown:
        raise click.BadParameter(
            f"unknown incidents {unknown}; choose from {', '.join(INCIDENT_KINDS)}, all, none"
        )
    return chosen


def write_ground_truth(truth: GroundTruth, path: Path) -> None:
    with path.open("w", encoding="utf-8") as out:
        for journey in truth.journeys:
            out.write(json.dumps({"type": "journey", **journey.as_dict()}) + "\n")
        for identifier, person in truth.identity_links:
            out.write(
                json.dumps({"type": "identity_link", "identifier": identifier, "person": person})
                + "\n"
            )


def _collector_sender(url: str, api_key: str) -> Callable[[list[dict[str, Any]]], None]:
    if not url.startswith(("http://", "https://")):
        raise click.BadParameter(f"--collector-url must be an http(s) URL, not {url!r}")

    def send(batch: list[dict[str, Any]]) -> None:
        request = urllib.request.Request(  # noqa: S310 - scheme checked above
            url,
            data=orjson.dumps(batch),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - scheme checked above
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise click.ClickException(
                f"the collector answered {exc.code}: {exc.read()[:500]!r}"
            ) from exc
        if body.get("rejected"):
            raise click.ClickException(
                f"the collector rejected simulated events: {body['rejected'][:3]}"
            )

    return send


def simulate_day(
    settings: Settings,
    *,
    day: date,
    personas: int,
    incidents: list[str],
    seed: int,
    ground_truth: Path | None,
    collector_url: str | None,
    api_key: str | None,
    batch_size: int = 100,
) -> int:
    start = int(datetime.combine(day, time(0), tzinfo=UTC).timestamp() * 1000)
    chosen = [i for i in default_incidents(start) if i.kind in incidents]
    simulator = DaySimulator(seed, start, personas, chosen)
    events = simulator.generate()
    if ground_truth:
        write_ground_truth(simulator.truth, ground_truth)
    if collector_url:
        if not api_key:
            raise click.ClickException("--api-key is required with --collector-url")
        send_batch = _collector_sender(collector_url, api_key)
        with click.progressbar(
            range(0, len(events), batch_size), label="sending to the collector"
        ) as bar:
            for index in bar:
                send_batch(events[index : index + batch_size])
        return len(events)
    producer = raw_producer(settings)
    topic = settings.topic(RAW)
    with click.progressbar(events, label="producing to Kafka") as bar:
        for event in bar:
            producer.send(topic, value=orjson.dumps(event))
    producer.flush()
    producer.close()
    return len(events)
