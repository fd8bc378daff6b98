"""The live page of one segment (docs/segments.md) lists that segment's alerts and those of no
segment, read from a real Alertmanager (the live page's own, with basic auth)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.live import LiveFeed
from streams.monitoring import USERNAME
from tests.e2e.test_live_page import ALERTMANAGER_PASSWORD, fire, start_alertmanager
from tests.helpers import free_port, stop_process, wait_until

pytestmark = pytest.mark.integration


def alert(name: str, **labels: str) -> dict[str, Any]:
    return {
        "labels": {"alertname": name, "severity": "warning", **labels},
        "annotations": {"summary": f"{name} {labels}"},
        "startsAt": datetime.now(UTC).isoformat(),
        "endsAt": (datetime.now(UTC) + timedelta(minutes=10)).isoformat(),
    }


def test_a_segments_live_figures_list_its_alerts_and_those_of_no_segment(tmp_path: Path) -> None:
    port = free_port()
    alertmanager = start_alertmanager(tmp_path / "alertmanager", port)
    url = f"http://127.0.0.1:{port}"
    pool = ThreadPoolExecutor(1)
    try:
        at_payment = {"journey": "online_purchase", "stage": "payment"}
        fire(url, alert("SegmentDropOffSpike", segment="gold", **at_payment))
        fire(url, alert("SegmentDropOffSpike", segment="eu_stores", **at_payment))
        fire(url, alert("SinkFailing"))

        def shown(segment: str | None) -> list[tuple[str, str | None]]:
            feed = LiveFeed(
                lambda: {},
                pool,
                1.0,
                url,
                alertmanager_auth=lambda: (USERNAME, ALERTMANAGER_PASSWORD),
                segment=segment,
            )
            body = orjson.loads(asyncio.run(feed.current()))
            assert body["alerts_status"] == "ok", body["alerts_status"]
            return sorted((a["name"], a["segment"]) for a in body["alerts"])

        wait_until(lambda: len(shown(None)) == 3, 20, "the three alerts in Alertmanager")
        assert shown("gold") == [("SegmentDropOffSpike", "gold"), ("SinkFailing", None)]
        assert shown("eu_stores") == [("SegmentDropOffSpike", "eu_stores"), ("SinkFailing", None)]
        assert shown("other") == [("SinkFailing", None)]
    finally:
        pool.shutdown()
        stop_process(alertmanager)
