"""The local Prometheus and Alertmanager (real, Debian packages) take writes and reads only with
the product's credentials: anonymous alerts and silences get 401, as do anonymous reads;
Prometheus still delivers its alerts to Alertmanager; the live page's fetch uses the
credentials and passes on only http(s) links."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.settings import Settings
from streams.live import fetch_alerts
from streams.monitoring import (
    LocalMonitoring,
    alertmanager_credentials,
    http_call,
    start_local_monitoring,
)
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.e2e


def _alert(name: str, **annotations: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "labels": {"alertname": name, "severity": "warning"},
        "annotations": {"summary": f"{name} summary", **annotations},
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(minutes=10)).isoformat(),
    }


def _silence() -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "matchers": [{"name": "alertname", "value": ".+", "isRegex": True, "isEqual": True}],
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(hours=1)).isoformat(),
        "createdBy": "anyone",
        "comment": "catch-all",
    }


@pytest.fixture(scope="module")
def monitoring(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("monitoring-auth")
    rules = tmp / "rules.yml"
    rules.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "always",
                        "interval": "1s",
                        # pending first: an alert fired before Prometheus has discovered
                        # Alertmanager is dropped, and sent again only a minute later
                        "rules": [{"alert": "AlwaysFiring", "expr": "vector(1)", "for": "5s"}],
                    }
                ]
            }
        )
    )
    started = start_local_monitoring(
        tmp / "monitoring", {}, free_port(), free_port(), tmp, rule_files=[rules]
    )
    assert started is not None, "prometheus and prometheus-alertmanager are installed by make test"
    try:
        wait_until(
            lambda: all(
                started.call(f"{url}/-/ready")[0] == 200
                for url in (started.prometheus_url, started.alertmanager_url)
            ),
            60,
            "Prometheus and Alertmanager ready",
            0.3,
        )
        yield started
    finally:
        started.stop()


def test_the_password_is_generated_once_private_and_not_in_the_configs(
    monitoring: LocalMonitoring,
) -> None:
    directory = monitoring.password_file.parent
    assert stat.S_IMODE(os.stat(monitoring.password_file).st_mode) == 0o600
    assert len(monitoring.password) >= 32
    for config in ("prometheus.yml", "alertmanager.yml", "web.yml"):
        assert monitoring.password not in (directory / config).read_text()
    assert stat.S_IMODE(os.stat(directory / "web.yml").st_mode) == 0o600


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v2/alerts", [_alert("Anonymous", runbook_url="javascript:alert(3)")]),
        ("/api/v2/silences", _silence()),
        ("/api/v2/alerts", None),
        ("/api/v2/silences", None),
        ("/api/v2/status", None),
    ],
)
def test_alertmanager_refuses_anonymous_requests(
    monitoring: LocalMonitoring, path: str, body: Any
) -> None:
    assert http_call(monitoring.alertmanager_url + path, body)[0] == 401
    wrong = "Basic " + "am91cm5leXdhdGNoOndyb25n"  # journeywatch:wrong
    assert http_call(monitoring.alertmanager_url + path, body, authorization=wrong)[0] == 401


@pytest.mark.parametrize("path", ["/api/v1/query?query=up", "/api/v1/targets", "/graph"])
def test_prometheus_refuses_anonymous_requests(monitoring: LocalMonitoring, path: str) -> None:
    assert http_call(monitoring.prometheus_url + path)[0] == 401
    assert monitoring.call(monitoring.prometheus_url + path)[0] == 200


def test_with_the_credentials_alerts_and_silences_work(monitoring: LocalMonitoring) -> None:
    am = monitoring.alertmanager_url
    posted = _alert(
        "PostedWithCredentials",
        runbook_url="javascript:alert(3)",
        dashboard_url="https://grafana.example.invalid/d/jw-oncall",
    )
    assert monitoring.call(f"{am}/api/v2/alerts", [posted])[0] == 200
    status, body = monitoring.call(
        f"{am}/api/v2/silences",
        {**_silence(), "matchers": [{"name": "alertname", "value": "Nothing", "isRegex": False}]},
    )
    assert status == 200 and b"silenceID" in body

    # the live page's fetch, with the credentials from settings (the local run's password file)
    settings = Settings(
        alertmanager_url=am,
        data_dir=monitoring.password_file.parent.parent,
    )
    auth = alertmanager_credentials(settings)
    assert auth == (monitoring.username, monitoring.password)

    def shown() -> dict[str, Any] | None:
        alerts = fetch_alerts(am, auth=auth)
        return next((a for a in alerts if a["name"] == "PostedWithCredentials"), None)

    wait_until(lambda: shown() is not None, 10, "the posted alert in Alertmanager", 0.2)
    alert = shown()
    assert alert is not None
    assert alert["runbook_url"] is None and alert["runbook_text"] == "javascript:alert(3)"
    assert alert["dashboard_url"] == "https://grafana.example.invalid/d/jw-oncall"
    assert alert["dashboard_text"] is None
    with pytest.raises(OSError, match="401"):
        fetch_alerts(am)  # without credentials


def test_prometheus_delivers_alerts_to_alertmanager_with_the_credentials(
    monitoring: LocalMonitoring,
) -> None:
    def delivered() -> bool:
        alerts = monitoring.get_json(f"{monitoring.alertmanager_url}/api/v2/alerts") or []
        return any(a["labels"].get("alertname") == "AlwaysFiring" for a in alerts)

    wait_until(delivered, 60, "Prometheus's AlwaysFiring alert in Alertmanager", 0.5)
    prometheus_log = (monitoring.password_file.parent.parent / "prometheus.log").read_text()
    assert "Error sending alert" not in prometheus_log  # e.g. "bad response status 401"


def test_a_password_file_setting_is_read(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    settings = Settings(alertmanager_password_file=secret, alertmanager_username="pages")
    assert alertmanager_credentials(settings) == ("pages", "s3cret")
    assert alertmanager_credentials(Settings(data_dir=tmp_path)) is None
    # the local run's password goes to a loopback Alertmanager only
    (tmp_path / "monitoring").mkdir()
    (tmp_path / "monitoring" / "web.password").write_text("local")
    local = Settings(data_dir=tmp_path, alertmanager_url="http://127.0.0.1:9093")
    assert alertmanager_credentials(local) == ("journeywatch", "local")
    remote = Settings(data_dir=tmp_path, alertmanager_url="http://alertmanager.example:9093")
    assert alertmanager_credentials(remote) is None


class _Recorder:
    """A loopback HTTP server answering every GET with ``status`` (and ``location``),
    recording each request's Authorization header."""

    def __init__(self, status: int = 200, location: str | None = None) -> None:
        import http.server
        import threading

        seen = self.seen = []  # type: list[str | None]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.headers.get("Authorization"))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"[]")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _feed(url: str | None, auth: Any = None) -> Any:
    from concurrent.futures import ThreadPoolExecutor

    from streams.live import LiveFeed

    return LiveFeed(dict, ThreadPoolExecutor(1), 1.0, url, alertmanager_auth=auth)


def test_the_live_feed_never_follows_a_redirect_with_the_credentials() -> None:
    elsewhere = _Recorder()
    redirecting = _Recorder(302, f"{elsewhere.url}/api/v2/alerts")
    try:
        alerts, status = _feed(redirecting.url, lambda: ("journeywatch", "pw-secret"))._alerts()
        assert alerts is None and "redirected (HTTP 302)" in status, status
        assert len(redirecting.seen) == 1 and redirecting.seen[0] is not None
        assert elsewhere.seen == []  # neither the credentials nor the request went on
        assert _feed(elsewhere.url, lambda: None)._alerts() == ([], "ok")
    finally:
        redirecting.close()
        elsewhere.close()


def test_the_live_feeds_status_never_shows_the_urls_user_and_password() -> None:
    for url in (
        "http://am-user:am-secret@127.0.0.1:1",  # unreachable
        "http://am-user:am-secret@127.0.0.1:notaport",  # invalid
    ):
        alerts, status = _feed(url, lambda: None)._alerts()
        assert alerts is None and "am-secret" not in status and "am-user" not in status, status
    refusing = _Recorder(401)
    try:
        url = refusing.url.replace("//", "//am-user:am-secret@")
        alerts, status = _feed(url, lambda: None)._alerts()
        assert "HTTP 401" in status and "am-secret" not in status, status
        # the URL's user and password went as basic auth, not as part of the address
        from streams.monitoring import basic_auth_header

        assert refusing.seen == [basic_auth_header("am-user", "am-secret")]
    finally:
        refusing.close()


def test_the_local_password_is_sent_only_to_a_loopback_url_the_feed_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without credentials given, the feed reads the settings; the local run's password goes
    only to a loopback Alertmanager, decided on the URL the feed calls (the settings' own
    JW_ALERTMANAGER_URL may differ); invalid settings are a status on the page, not a crash."""
    from streams.monitoring import PASSWORD_FILE, ensure_password, monitoring_dir

    for name in list(os.environ):
        if name.startswith("JW_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("JW_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("JW_ALERTMANAGER_URL", "http://127.0.0.1:9093")  # loopback
    password = ensure_password(monitoring_dir(Settings()) / PASSWORD_FILE)
    assert _feed("http://alertmanager.example:9093").alertmanager_auth() is None
    assert _feed("http://127.0.0.1:9093").alertmanager_auth()[1] == password
    monkeypatch.setenv("JW_PARTITIONS", "zero")
    alerts, status = _feed("http://127.0.0.1:1")._alerts()
    assert alerts is None and "invalid settings JW_PARTITIONS" in status, status
    # the sink passes its own settings' credentials: sent to its own (same) URL
    source = (Path(__file__).parents[2] / "streams" / "sink.py").read_text()
    assert "alertmanager_auth=lambda: alertmanager_credentials(settings)" in source
