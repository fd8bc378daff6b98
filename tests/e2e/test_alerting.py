"""On-call is paged for a payment outage, and not on a normal day: real workers, Prometheus and
Alertmanager (Debian packages), the shipped rules and routing, a webhook receiver of the test.

The rules watch hours (a six-hour baseline, ten-minute windows, five minutes of ``for``); a
test cannot. Both Prometheus and Alertmanager run the shipped files with every duration 60
times shorter (``streams.monitoring.compress_rules``): a minute of the rules' time is a second
here, and the simulated stream is replayed 180 times faster than its event time. Thresholds,
volume guards, labels, annotations, routes and inhibitions are the shipped ones.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import urllib.parse
import uuid
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from kafka import KafkaProducer

from pipeline.scenario import HOUR, DaySimulator, Incident
from pipeline.settings import Settings
from streams.broker import EmbeddedBroker
from streams.monitoring import (
    LocalMonitoring,
    compress_alertmanager_route,
    compress_duration,
    compress_rules,
    start_local_monitoring,
)
from streams.topics import RAW, ensure_topics
from tests.e2e.stack import PARTITIONS, Topology, day_start, produce_day
from tests.grafana import expand_promql, prometheus_queries
from tests.helpers import REPO, free_port, http_get, wait_until

pytestmark = pytest.mark.e2e

FACTOR = 60  # the rules' minutes pass in seconds
SPEED = 180  # simulated seconds per wall-clock second: 09:00 to 12:30 in 70 s
WARM, FIRST, LAST = 5 * HOUR, 9 * HOUR, 12 * HOUR + 30 * HOUR // 60
WARM_SPEED = 3_000
OUTAGE = (11 * HOUR, 12 * HOUR)
LATE = "JourneyOutputsLate"  # outputs of a replayed past morning are late by construction
PERSONAS = 20_000  # about 230 web payments an hour around noon
DEPLOY = REPO / "deploy"


class Webhook:
    """An Alertmanager webhook receiver: every notification, by receiver (the URL path)."""

    def __init__(self) -> None:
        self.notifications: list[tuple[str, dict[str, Any], float]] = []
        received = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.path.strip("/"), json.loads(body), time.monotonic()))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self) -> list[tuple[str, dict[str, Any], float]]:
        """(receiver, alert, arrival) for every firing alert delivered."""
        return [
            (receiver, alert, at)
            for receiver, body, at in self.notifications
            for alert in body["alerts"]
            if alert["status"] == "firing"
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def alertmanager_config(webhook: Webhook) -> dict[str, Any]:
    """The shipped routing, compressed, every receiver delivering to the test's webhook."""
    config: dict[str, Any] = yaml.safe_load(
        (DEPLOY / "alertmanager" / "alertmanager.yml").read_text()
    )
    config["global"]["resolve_timeout"] = compress_duration(
        config["global"]["resolve_timeout"], FACTOR
    )
    config["route"] = compress_alertmanager_route(config["route"], FACTOR)
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"{webhook.url}/{receiver['name']}"
    return config


def start_monitoring(tmp: Path, topology: Topology, webhook: Webhook) -> LocalMonitoring:
    rules = tmp / "rules.yml"
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "journeywatch.yml").read_text())
    rules.write_text(yaml.safe_dump(compress_rules(shipped, FACTOR), sort_keys=False))
    monitoring = start_local_monitoring(
        tmp / "monitoring",
        {
            "journeywatch-worker": [f"127.0.0.1:{topology.port + i}" for i in topology.workers],
            "journeywatch-sink": [f"127.0.0.1:{topology.status_port}"],
            "journeywatch-collector": [f"127.0.0.1:{topology.collector_port}"],
        },
        free_port(),
        free_port(),
        tmp,
        rule_files=[rules],
        alertmanager_config=alertmanager_config(webhook),
        scrape_interval="1s",
    )
    assert monitoring is not None, "prometheus and prometheus-alertmanager are not installed"

    def up() -> bool:
        for url in (monitoring.prometheus_url, monitoring.alertmanager_url):
            if monitoring.call(f"{url}/-/ready")[0] != 200:
                return False
        targets = (monitoring.get_json(f"{monitoring.prometheus_url}/api/v1/targets") or {})["data"]
        active = targets["activeTargets"]
        return len(active) == len(topology.workers) + 2 and all(t["health"] == "up" for t in active)

    wait_until(up, 60, "Prometheus scraping every worker, Alertmanager ready", 0.5)
    return monitoring


def query(
    monitoring: LocalMonitoring, promql: str, at: float | None = None
) -> list[dict[str, Any]]:
    url = f"{monitoring.prometheus_url}/api/v1/query?query={urllib.parse.quote(promql)}"
    if at is not None:
        url += f"&time={at}"
    return list((monitoring.get_json(url) or {})["data"]["result"])


def last_evaluation(monitoring: LocalMonitoring) -> float:
    """The oldest last evaluation of the rule groups (epoch seconds)."""
    rules = monitoring.get_json(f"{monitoring.prometheus_url}/api/v1/rules") or {}
    groups = rules["data"]["groups"]
    return min(
        datetime.fromisoformat(g["lastEvaluation"].replace("Z", "+00:00")).timestamp()
        for g in groups
    )


class Run:
    """Two workers, Prometheus and Alertmanager; the simulated morning replayed into them."""

    def __init__(self, broker: EmbeddedBroker, tmp: Path, incident: bool) -> None:
        start = day_start()
        incidents = [Incident("payment_outage", start + OUTAGE[0], start + OUTAGE[1])]
        simulator = DaySimulator(7, start, PERSONAS, incidents if incident else [])
        events = simulator.generate()
        self.warm = [e for e in events if WARM <= self._at(e) - start < FIRST]
        self.events = [e for e in events if FIRST <= self._at(e) - start < LAST]
        self.outage_index = next(
            n for n, e in enumerate(self.events) if self._at(e) - start >= OUTAGE[0]
        )
        ensure_topics(Settings(broker_url=broker.url, partitions=PARTITIONS))
        # Ten minutes of lateness: the replay's second of skew between partitions is three
        # simulated minutes.
        self.topology = Topology(broker, tmp, allowed_lateness_s=600)
        self.webhook = Webhook()
        self.broker = broker
        self.tmp = tmp
        self.outage_reached = 0.0
        self.monitoring: LocalMonitoring | None = None

    @staticmethod
    def _at(event: dict[str, Any]) -> int:
        return int(datetime.fromisoformat(event["occurred_at"]).timestamp() * 1000)

    def start(self) -> LocalMonitoring:
        """Workers that have already run for four simulated hours, then Prometheus.

        A fresh install has no drop-offs at a stage until its first time-out comes due (an
        hour for the app sign-up, two for the cart): its drop-off ratio then rises from 0 to
        its normal, which the rules would take for a spike (docs/alerting.md). Production
        runs warm; so does this test before Prometheus starts watching.
        """
        self.topology.start(0)
        self.topology.start(1)
        # the sink and the collector run too: the dashboards' panels show them
        self.topology.start_sink()
        self.topology.start_collector()
        wait_until(self.topology.balanced, 120, "two workers sharing the partitions", 0.5)
        wait_until(
            lambda: http_get(f"http://127.0.0.1:{self.topology.status_port}/readyz")[0] == 200,
            60,
            "the sink",
        )
        produce_day(self.broker.url, self.warm, WARM_SPEED)
        wait_until(self.topology.drained, 120, "the warm-up hours processed", 0.5)
        self.monitoring = start_monitoring(self.tmp, self.topology, self.webhook)
        return self.monitoring

    def replay(self) -> threading.Thread:
        def progress(done: float) -> None:
            if not self.outage_reached and done * len(self.events) > self.outage_index:
                self.outage_reached = time.monotonic()

        thread = threading.Thread(
            target=produce_day, args=(self.broker.url, self.events, SPEED, progress), daemon=True
        )
        thread.start()
        return thread

    def stop(self) -> None:
        if self.monitoring is not None:
            self.monitoring.stop()
        self.topology.stop()
        self.webhook.close()


def drop_off_page(run: Run) -> tuple[str, dict[str, Any], float] | None:
    for receiver, alert, at in run.webhook.alerts():
        labels = alert["labels"]
        if (labels["alertname"], labels.get("stage"), labels.get("channel")) == (
            "JourneyDropOffSpike",
            "payment",
            "web",
        ):
            return receiver, alert, at
    return None


def dashboard_queries_without_data(run: Run) -> list[tuple[str, str, str]]:
    """Every Prometheus query of every Grafana dashboard, as on-call sees them when the page
    links to the dashboards (the alert's journey, stage and channel), with a little of each
    kind of traffic the panels show: collector requests, accepted and refused; a record the
    ingest refuses. Returns the queries that still have no data after a minute."""
    assert run.monitoring is not None
    monitoring = run.monitoring
    topology = run.topology
    clock = datetime.fromisoformat(run.events[-1]["occurred_at"]).isoformat()
    good = {
        "event_id": str(uuid.uuid4()),
        "occurred_at": clock,
        "channel": "web",
        "touchpoint": "system.probe",
        "action": "view",
        "device_id": "probe",
    }
    assert topology.post([good]) == 202
    assert topology.post([{**good, "event_id": "x", "channel": "fax"}]) == 400
    producer = KafkaProducer(bootstrap_servers=run.broker.url)
    producer.send(RAW, orjson.dumps({**good, "event_id": str(uuid.uuid4()), "touchpoint": ""}))
    producer.flush()
    producer.close()
    segment = {"journey": "online_purchase", "stage": "payment", "channel": "web"}
    queries = prometheus_queries()
    gaps: list[tuple[str, str, str]] = []

    def covered() -> bool:
        gaps[:] = [
            (uid, title, promql)
            for uid, title, expr in queries
            if not query(monitoring, promql := expand_promql(expr, segment, "30s"))
        ]
        return not gaps

    with contextlib.suppress(AssertionError):  # the caller reports what is missing
        wait_until(covered, 60, "every dashboard query to return data", 1.0)
    return gaps


def test_a_payment_outage_pages_oncall_with_what_to_act_on(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    run = Run(broker, tmp_path, incident=True)
    try:
        run.start()
        replay = run.replay()
        receiver, alert, arrived = wait_until(
            lambda: drop_off_page(run), 180, "the web payment drop-off page at the webhook", 0.5
        )
        # while the morning still streams in and the alert fires: what the dashboards show
        gaps = dashboard_queries_without_data(run)
        replay.join()
    finally:
        run.stop()
    assert gaps == [], "dashboard queries without data:\n" + "\n".join(map(str, gaps))
    delay = arrived - run.outage_reached
    print(f"page {delay:.1f} s after the outage began (x{FACTOR}: {delay:.0f} rule-minutes)")
    # Failures from 11:00, time-out 30 min, lateness 10 min: drop-offs from 11:40 (13 s after
    # the outage began here); then the 10-minute window and 5 minutes of ``for``.
    assert 0 < delay < 45, delay
    assert receiver == "oncall"  # severity page routes to on-call
    labels, annotations = alert["labels"], alert["annotations"]
    assert labels == {
        "alertname": "JourneyDropOffSpike",
        "journey": "online_purchase",
        "stage": "payment",
        "channel": "web",
        "severity": "page",
    }
    summary = re.fullmatch(
        r"Drop-off at online_purchase / payment on web is ([\d.]+)%, normally ([\d.]+)%\.",
        annotations["summary"],
    )
    assert summary, annotations["summary"]
    current, baseline = map(float, summary.groups())
    assert current > 2 * baseline and current - baseline > 10, annotations["summary"]
    runbook = annotations["runbook_url"].split("/blob/main/")[1]
    assert (REPO / runbook).is_file(), runbook
    assert annotations["dashboard"] == (
        "/d/jw-oncall?var-journey=online_purchase&var-stage=payment&var-channel=web"
    )


def test_the_same_morning_without_the_outage_pages_nobody(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    run = Run(broker, tmp_path, incident=False)
    try:
        monitoring = run.start()
        run.replay().join()
        ended = time.time()
        # Every rule evaluated on everything the replay caused, past one ``for`` and the
        # Alertmanager's group wait: an alert that was going to fire has been delivered.
        # (Ingestion stops with the replay: IngestionStalled may fire 15 s later, rightly.)
        wait_until(
            lambda: last_evaluation(monitoring) > ended + 8, 60, "rules evaluated after the run"
        )
        entered = query(
            monitoring,
            'sum(jw_journey_stage_entered_total{journey="online_purchase",stage="payment",'
            'channel="web"})',
        )
        pending = query(monitoring, "ALERTS", at=ended + 6)
    finally:
        run.stop()
    # the morning did happen: hundreds of web payments went through the stage
    assert entered and float(entered[0]["value"][1]) > 300, entered
    # It happened 40 days ago: replayed, every output is that late by the wall clock, which
    # JourneyOutputsLate reports as it would for any backfill: a warning, to the chat
    # receiver. Nothing else fires, nothing else is pending.
    delivered = [(receiver, alert["labels"]) for receiver, alert, _ in run.webhook.alerts()]
    late = [(r, labels) for r, labels in delivered if labels["alertname"] == LATE]
    assert late and all(r == "ops-chat" and labels["severity"] == "warning" for r, labels in late)
    assert [labels for _, labels in delivered if labels["alertname"] != LATE] == []
    assert [p["metric"] for p in pending if p["metric"]["alertname"] != LATE] == []
