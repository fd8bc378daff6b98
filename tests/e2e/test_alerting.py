"""On-call is paged for a payment outage, and not on a normal day: real workers, Prometheus and
Alertmanager (Debian packages), the shipped rules and routing, a webhook receiver of the test.

The rules watch hours (a six-hour baseline, ten-minute windows, five minutes of ``for``); a
test cannot. Both Prometheus and Alertmanager run the shipped files with every duration 60
times shorter (``streams.monitoring.compress_rules``): a minute of the rules' time is a second
here, and the simulated stream is replayed 180 times faster than its event time. Thresholds,
volume guards, labels, annotations, routes and inhibitions are the shipped ones.

The experience-KPI rules (``experience_kpis.yml``) count survey answers over hours: they run
180 times faster, at the replay's own pace (an hour of their window holds an hour of simulated
answers). The same two runs test them: the outage morning also has an understaffed call centre
whose answers turn bad (``CsatDrop`` must reach the chat receiver), and the normal morning must
not raise them though their inputs are there.
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
# Callers wait 11-25 minutes, 40% hang up, the others answer CSAT 1-3 (normally 1, 2, 4, 5, 5).
UNDERSTAFFED = (10 * HOUR + 30 * HOUR // 60, 12 * HOUR + 30 * HOUR // 60)
KPI_FACTOR = SPEED  # the experience-KPI rules' hours are the replay's simulated hours
RULE_FILES = {"journeywatch.yml": FACTOR, "experience_kpis.yml": KPI_FACTOR}
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
    rule_files = []
    for name, factor in RULE_FILES.items():
        shipped = yaml.safe_load((DEPLOY / "prometheus" / "rules" / name).read_text())
        rule_files.append(tmp / f"compressed-{name}")
        rule_files[-1].write_text(yaml.safe_dump(compress_rules(shipped, factor), sort_keys=False))
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
        rule_files=rule_files,
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
        incidents = [
            Incident("payment_outage", start + OUTAGE[0], start + OUTAGE[1]),
            Incident("call_centre_understaffed", start + UNDERSTAFFED[0], start + UNDERSTAFFED[1]),
        ]
        simulator = DaySimulator(7, start, PERSONAS, incidents if incident else [])
        events = simulator.generate()
        self.warm = [e for e in events if WARM <= self._at(e) - start < FIRST]
        self.events = [e for e in events if FIRST <= self._at(e) - start < LAST]
        self.outage_index = next(
            n for n, e in enumerate(self.events) if self._at(e) - start >= OUTAGE[0]
        )
        self.understaffed_index = next(
            n for n, e in enumerate(self.events) if self._at(e) - start >= UNDERSTAFFED[0]
        )
        ensure_topics(Settings(broker_url=broker.url, partitions=PARTITIONS))
        # Ten minutes of lateness: the replay's second of skew between partitions is three
        # simulated minutes.
        self.topology = Topology(broker, tmp, allowed_lateness_s=600)
        self.webhook = Webhook()
        self.broker = broker
        self.tmp = tmp
        self.outage_reached = 0.0
        self.understaffed_reached = 0.0
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
            if not self.understaffed_reached and done * len(self.events) > self.understaffed_index:
                self.understaffed_reached = time.monotonic()

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


KPI_ALERTS = ("NpsDrop", "CsatDrop")
CALLS = {"journey": "support_case", "channel": "call_center"}


def kpi_alerts(run: Run) -> list[tuple[str, dict[str, Any], float]]:
    """Every experience-KPI alert delivered, in order of arrival."""
    return [a for a in run.webhook.alerts() if a[1]["labels"]["alertname"] in KPI_ALERTS]


def csat_drop(run: Run) -> tuple[str, dict[str, Any], float] | None:
    return next((a for a in kpi_alerts(run) if a[1]["labels"]["alertname"] == "CsatDrop"), None)


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
        # the call centre's answers turned bad at 10:30, before the outage: already delivered
        kpi_receiver, kpi_alert, kpi_arrived = wait_until(
            lambda: csat_drop(run), 30, "the call centre's CSAT drop at the webhook", 0.5
        )
        # while the morning still streams in and the alert fires: what the dashboards show
        gaps = dashboard_queries_without_data(run)
        replay.join()
        assert run.monitoring is not None
        calls = 'journey="support_case",channel="call_center"'
        nps = {  # for the record: how far the NPS of the calls fell (no assertion)
            name: query(run.monitoring, f"max_over_time(jw:{name}{{{calls}}}[60s])")
            for name in ("nps_drop:1h", "nps_drop_z:1h")
        }
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

    # The understaffed call centre: CSAT 1-3 from 10:30 (60% satisfied before). A warning to
    # the operations chat, for the calls' journey and channel only, within the hour.
    kpi_delay = kpi_arrived - run.understaffed_reached
    others = [a["labels"] for _, a, _ in kpi_alerts(run) if a["labels"]["alertname"] != "CsatDrop"]
    print(
        f"CsatDrop {kpi_delay:.1f} s after the call centre was understaffed "
        f"(x{KPI_FACTOR}: {kpi_delay * KPI_FACTOR / 60:.0f} simulated minutes); "
        f"other KPI alerts: {others}; the calls' NPS at most "
        + ", ".join(f"{k} {float(v[0]['value'][1]):.1f}" for k, v in nps.items() if v)
    )
    # The callers of 10:30 answer after 11 to 25 minutes in the queue; the hour's share of 4s
    # and 5s takes a quarter of an hour of them to fall 10 points beyond chance; then 15
    # minutes of ``for``: about an hour (measured: 70 simulated minutes, 23 s), and always
    # while the call centre is still understaffed (two hours, 40 s).
    assert 15 * 60 / KPI_FACTOR < kpi_delay < 2 * 3600 / KPI_FACTOR, kpi_delay
    assert kpi_receiver == "ops-chat"
    assert kpi_alert["labels"] == {"alertname": "CsatDrop", **CALLS, "severity": "warning"}
    assert all({k: a["labels"][k] for k in CALLS} == CALLS for _, a, _ in kpi_alerts(run)), (
        kpi_alerts(run)
    )
    kpi_summary = re.fullmatch(
        r"CSAT of support_case on call_center is (\d+)% satisfied over the last hour "
        r"\((\d+) answers\), (\d+) points below the 6 hours before \((\d+)%\)\.",
        kpi_alert["annotations"]["summary"],
    )
    assert kpi_summary, kpi_alert["annotations"]["summary"]
    satisfied, answers, drop, normal = map(int, kpi_summary.groups())
    assert answers >= 50 and drop >= 10 and 50 <= normal <= 70 and satisfied < normal - 10
    runbook = kpi_alert["annotations"]["runbook_url"].split("/blob/main/")[1]
    assert runbook == "docs/runbooks/experience-kpi-drop.md" and (REPO / runbook).is_file()


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
        # The KPI rules had their inputs over the replay's last hour and a half (30 s):
        # answers in every hour's window, a baseline, a drop measured in standard errors.
        calls = 'journey="support_case",channel="call_center"'
        kpis = {
            name: query(monitoring, f"{over}(jw:{name}{{{calls}}}[30s])", at=ended)
            for over, name in (
                ("min_over_time", "csat_answered:1h"),
                ("min_over_time", "nps_answered:1h"),
                ("max_over_time", "csat_drop_z:1h"),
                ("max_over_time", "nps_drop_z:1h"),
                ("max_over_time", "nps_drop:1h"),
            )
        }
    finally:
        run.stop()
    # the morning did happen: hundreds of web payments went through the stage
    assert entered and float(entered[0]["value"][1]) > 300, entered
    figures = {name: float(rows[0]["value"][1]) for name, rows in kpis.items() if rows}
    print(f"the call centre's KPI rules over the last simulated hour and a half: {figures}")
    assert set(figures) == set(kpis), kpis
    assert figures["csat_answered:1h"] >= 50 and figures["nps_answered:1h"] >= 50, figures
    # It happened 40 days ago: replayed, every output is that late by the wall clock, which
    # JourneyOutputsLate reports as it would for any backfill: a warning, to the chat
    # receiver. Nothing else fires, nothing else is pending.
    delivered = [(receiver, alert["labels"]) for receiver, alert, _ in run.webhook.alerts()]
    late = [(r, labels) for r, labels in delivered if labels["alertname"] == LATE]
    assert late and all(r == "ops-chat" and labels["severity"] == "warning" for r, labels in late)
    assert [labels for _, labels in delivered if labels["alertname"] != LATE] == []
    assert [p["metric"] for p in pending if p["metric"]["alertname"] != LATE] == []
