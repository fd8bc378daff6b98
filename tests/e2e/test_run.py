"""`journeywatch run`, as `make run` starts it: ready, filling ClickHouse, stopping cleanly, and
starting again in the same directory."""

from __future__ import annotations

import contextlib
import json
import signal
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from streams.monitoring import basic_auth_header, http_call
from tests.helpers import REPO, free_port, http_get, http_json, jw_env, wait_until

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def journeywatch_run(env: dict[str, str], output: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`journeywatch run` with its output in ``output``; killed with its children if the test
    leaves it running."""
    with open(output, "wb") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "run"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield run
        finally:
            if run.poll() is None:
                for child in psutil.Process(run.pid).children(recursive=True):
                    child.kill()
                run.kill()


@dataclass(frozen=True)
class RunPorts:
    """The free loopback ports of one ``journeywatch run`` under test."""

    status: int = field(default_factory=free_port)
    worker: int = field(default_factory=free_port)
    broker: int = field(default_factory=free_port)
    collector: int = field(default_factory=free_port)
    prometheus: int = field(default_factory=free_port)
    alertmanager: int = field(default_factory=free_port)

    def env(self, tmp_path: Path, **settings: Any) -> dict[str, str]:
        """``jw_env`` for a run on these ports with its data under ``tmp_path``."""
        return jw_env(
            prometheus_port=self.prometheus,
            alertmanager_port=self.alertmanager,
            collector_port=self.collector,
            status_port=self.status,
            worker_web_port=self.worker,
            embedded_broker_port=self.broker,
            data_dir=tmp_path / "var",
            clickhouse_dsn=f"chdb://{tmp_path / 'clickhouse'}",
            **settings,
        )


def test_run_serves_fills_clickhouse_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    ports = RunPorts()
    status_port, worker_port, collector_port = ports.status, ports.worker, ports.collector
    prometheus_port, alertmanager_port = ports.prometheus, ports.alertmanager
    env = ports.env(
        tmp_path,
        simulate_rate=200,
        web_admin_token=None,  # as `make run` starts: the run generates its admin token
        web_read_token=None,
    )
    base = f"http://127.0.0.1:{status_port}"
    token_file = tmp_path / "var" / "web-admin.token"

    def api(path: str) -> Any:
        """The sink's API, with the admin token the run generated."""
        return http_json(f"{base}{path}", token=token_file.read_text().strip())

    with journeywatch_run(env, tmp_path / "run.out") as run:

        def ready() -> bool:
            assert run.poll() is None, (tmp_path / "run.out").read_text()
            return http_get(f"{base}/readyz")[0] == 200

        wait_until(ready, 120, "the sink's /readyz")
        # a worker is not ready while a rebalance recovers its tables: wait, do not assume
        wait_until(
            lambda: http_get(f"http://127.0.0.1:{worker_port}/readyz")[0] == 200,
            60,
            "the worker's /readyz",
        )
        assert http_get(f"{base}/livez", token=None)[0] == 200
        # sign-in on: the generated admin token (0600) opens the pages, nothing else does
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32
        assert http_get(f"{base}/api/v1/stats", token=None)[0] == 401
        assert http_get(f"{base}/", token=None)[0] == 200  # urllib followed to the sign-in form
        status, page = http_get(f"{base}/", token=token)
        assert status == 200 and b"journeywatch" in page and b"/static/live.js" in page

        first = wait_until(
            lambda: (api("/api/v1/stats") or {}).get("touchpoints"),
            60,
            "the first touchpoints in ClickHouse",
        )
        wait_until(
            lambda: (api("/api/v1/stats") or {})["touchpoints"] > first + 100,
            60,
            "the touchpoint count to grow",
        )
        # the banner comes once the demo's history is in ClickHouse (docs: embedded-run.md)
        banner = wait_until(
            lambda: (text := (tmp_path / "run.out").read_text()) * ("Press Ctrl-C" in text),
            120,
            "the banner",
        )
        assert f"{base}/" in banner and "Press Ctrl-C to stop." in banner
        assert f"POST http://127.0.0.1:{collector_port}/v1/events" in banner
        assert f"Sign in       {base}/signin with the admin token in {token_file}" in banner

        # An event through the collector, with the demo key the run created, reaches ClickHouse
        # (the simulator sends no chat events, so the chat count is ours alone).
        key = (tmp_path / "var" / "collector-demo.key").read_text().strip()
        chat = {
            "event_id": "e2e-chat-1",
            "occurred_at": datetime.now(UTC).isoformat(),
            "channel": "chat",
            "touchpoint": "chat.start",
            "action": "start",
            "customer_id": "c-e2e",
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{collector_port}/v1/events",
            data=json.dumps(chat).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
        wait_until(
            lambda: (api("/api/v1/stats") or {}).get("touchpoints_by_channel", {}).get("chat") == 1,
            60,
            "the collector's event in ClickHouse",
        )

        # The local Prometheus (real, from Debian) scrapes every process of the run with the
        # project's rules loaded, and the local Alertmanager answers: both only with the
        # credentials the run generated under its data directory.
        password_file = tmp_path / "var" / "monitoring" / "web.password"
        wait_until(password_file.exists, 60, "the local monitoring's password file")
        assert f"sign in as journeywatch, password in {password_file}" in banner
        authorization = basic_auth_header("journeywatch", password_file.read_text().strip())

        def monitoring_json(url: str) -> Any:
            status, body = http_call(url, authorization=authorization)
            return json.loads(body) if status == 200 else None

        def targets_up() -> bool:
            data = monitoring_json(f"http://127.0.0.1:{prometheus_port}/api/v1/targets")
            active = data["data"]["activeTargets"] if data else []
            return len(active) == 3 and all(t["health"] == "up" for t in active)

        wait_until(targets_up, 60, "Prometheus to scrape the sink, the worker and the collector")
        rules = monitoring_json(f"http://127.0.0.1:{prometheus_port}/api/v1/rules")
        groups = rules["data"]["groups"]
        assert {"journeywatch-journeys", "journeywatch-pipeline"} <= {g["name"] for g in groups}
        accepted = monitoring_json(
            f"http://127.0.0.1:{prometheus_port}/api/v1/query?query=sum(jw_events_accepted_total)"
        )
        assert float(accepted["data"]["result"][0]["value"][1]) > 0
        alertmanager = f"http://127.0.0.1:{alertmanager_port}"
        assert http_call(f"{alertmanager}/-/ready", authorization=authorization)[0] == 200
        assert http_call(f"{alertmanager}/api/v2/alerts", [])[0] == 401
        assert http_call(f"http://127.0.0.1:{prometheus_port}/api/v1/targets")[0] == 401
        # the live page reads the local Alertmanager with the run's credentials
        wait_until(
            lambda: (api("/api/v1/live") or {}).get("alerts_status") == "ok",
            30,
            "the live page to read the local Alertmanager",
        )

        family = [run.pid] + [
            child.pid for child in psutil.Process(run.pid).children(recursive=True)
        ]
        assert len(family) >= 7  # run, broker, sink, worker, collector, prometheus, alertmanager
        kept = int((api("/api/v1/stats") or {})["touchpoints"])
        run.send_signal(signal.SIGINT)
        assert run.wait(90) == 0
        assert not [
            pid
            for pid in family
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
        ]
        assert "Stopped." in (tmp_path / "run.out").read_text()
        for log in [tmp_path / "run.out", *(tmp_path / "var" / "logs").glob("*.log")]:
            assert token not in log.read_text(errors="replace"), log

    # `make run` again: the embedded broker starts empty; the worker's tables from the first
    # run must not stop it (Faust refuses a table whose changelog is gone), ClickHouse keeps
    # what it has and goes on filling.
    with journeywatch_run(env, tmp_path / "run2.out") as again:

        def ready_again() -> bool:
            assert again.poll() is None, (tmp_path / "run2.out").read_text()
            return http_get(f"http://127.0.0.1:{worker_port}/readyz")[0] == 200

        wait_until(ready_again, 120, "the worker's /readyz in the second run")
        wait_until(
            lambda: (api("/api/v1/stats") or {}).get("touchpoints", 0) > kept + 100,
            60,
            "the touchpoint count to grow in the second run",
        )
        assert "(local state of a previous embedded run)" in (tmp_path / "run2.out").read_text()
        again.send_signal(signal.SIGINT)
        assert again.wait(90) == 0
