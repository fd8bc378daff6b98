"""Local Prometheus and Alertmanager for ``journeywatch run``, when their binaries are installed
(Debian: ``apt-get install prometheus prometheus-alertmanager``).

They scrape every process of the embedded run with journeywatch's own rules, so the alerts
that page on-call in production can be watched firing on one machine.

Only the product may write to them (alerts and silences reach the live page): both start with a
web configuration (``--web.config.file``) that asks every request for basic auth, user
``journeywatch`` and a random password generated once into ``<directory>/web.password``
(mode 0600, kept across runs). Prometheus reaches Alertmanager with the same credentials.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from pipeline.settings import Settings
from streams.process import child_process_options

RULES_DIR = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "rules"
USERNAME = "journeywatch"
PASSWORD_FILE = "web.password"  # noqa: S105 - a file name
WEB_CONFIG_FILE = "web.yml"
BCRYPT_ROUNDS = 10  # the servers check the hash on API requests: keep it cheap


def monitoring_dir(settings: Settings) -> Path:
    """Where ``journeywatch run`` keeps its local Prometheus and Alertmanager."""
    return settings.data_dir / "monitoring"


def secret_file(path: Path, generate: Callable[[], str]) -> str:
    """The secret in ``path``; the first time, ``generate()`` written to a file created with
    mode 0600 (never readable by others, not even for a moment). An existing file gets mode
    0600 too (one left readable by an older version, or by hand)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
    else:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(generate())
    return path.read_text().strip()


def write_private(path: Path, text: str) -> None:
    """``text`` into ``path`` (created or replaced), mode 0600 from the first byte: written to
    a temporary file of mode 0600 beside it, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def ensure_password(path: Path) -> str:
    """The password in ``path``, generated (random, mode 0600) the first time."""
    return secret_file(path, lambda: secrets.token_urlsafe(32))


def web_config(username: str, password: str) -> dict[str, Any]:
    """A Prometheus/Alertmanager ``--web.config.file``: basic auth, one user, bcrypt hash."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()
    return {"basic_auth_users": {username: hashed}}


def basic_auth_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def alertmanager_credentials(settings: Settings) -> tuple[str, str] | None:
    """The basic-auth credentials the product uses for ``alertmanager_url``.

    ``alertmanager_password``, else ``alertmanager_password_file``, else, for an Alertmanager
    on this machine (loopback), the password ``journeywatch run`` generated for its local one
    when that file exists (read on each call: the run starts Alertmanager after the sink); the
    local password is never sent elsewhere. None: no credentials.
    """
    if settings.alertmanager_password is not None:
        return settings.alertmanager_username, settings.alertmanager_password.get_secret_value()
    if settings.alertmanager_password_file is not None:
        password = settings.alertmanager_password_file.read_text().strip()
        return settings.alertmanager_username, password
    host = urllib.parse.urlsplit(settings.alertmanager_url or "").hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        return None
    try:
        local = (monitoring_dir(settings) / PASSWORD_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    return USERNAME, local


@dataclass
class LocalMonitoring:
    prometheus_url: str
    alertmanager_url: str
    processes: list[subprocess.Popen[bytes]]
    # both ask for basic auth: this user, the password in this file (0600, under data_dir)
    username: str
    password_file: Path

    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value both accept."""
        return basic_auth_header(self.username, self.password)

    def call(self, url: str, body: Any = None, timeout_s: float = 5.0) -> tuple[int, bytes]:
        """GET ``url`` (POST ``body`` as JSON when given) with the credentials: status, body;
        status 0 when nothing answers."""
        return http_call(url, body, authorization=self.authorization, timeout_s=timeout_s)

    def get_json(self, url: str) -> Any:
        """The JSON document at ``url``, None unless it answers 200."""
        status, body = self.call(url)
        return json.loads(body) if status == 200 else None

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def http_call(
    url: str, body: Any = None, *, authorization: str | None = None, timeout_s: float = 5.0
) -> tuple[int, bytes]:
    """One request to Prometheus or Alertmanager: GET, or POST of ``body`` as JSON."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data)  # noqa: S310 - loopback URL
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def binaries() -> tuple[str, str] | None:
    prometheus = shutil.which("prometheus")
    alertmanager = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    return (prometheus, alertmanager) if prometheus and alertmanager else None


def start_local_monitoring(
    directory: Path,
    targets: dict[str, list[str]],
    prometheus_port: int,
    alertmanager_port: int,
    log_dir: Path,
    *,
    rule_files: list[Path] | None = None,
    alertmanager_config: dict[str, Any] | None = None,
    scrape_interval: str = "5s",
    scrape_tokens: dict[str, Path] | None = None,
) -> LocalMonitoring | None:
    """Start both with generated configs; None when the binaries are not installed.

    By default they use the shipped rules and an Alertmanager that shows alerts without
    delivering them; tests pass their own (time-compressed rules, a webhook receiver). Both
    require basic auth (``LocalMonitoring.username``, ``.password_file``). ``scrape_tokens``:
    per job, a file with the bearer token its targets want (the sink's, with
    ``JW_WEB_PROTECT_HEALTH``).
    """
    found = binaries()
    if found is None:
        return None
    prometheus_bin, alertmanager_bin = found
    directory.mkdir(parents=True, exist_ok=True)
    password_file = directory / PASSWORD_FILE
    password = ensure_password(password_file)
    web_file = directory / WEB_CONFIG_FILE
    write_private(web_file, yaml.safe_dump(web_config(USERNAME, password), sort_keys=False))
    alertmanager_url = f"http://127.0.0.1:{alertmanager_port}"
    rules = rule_files if rule_files is not None else sorted(RULES_DIR.glob("*.yml"))
    prometheus_config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": "15s"},
        "rule_files": [str(path) for path in rules],
        "alerting": {
            "alertmanagers": [
                {
                    "basic_auth": {"username": USERNAME, "password_file": str(password_file)},
                    "static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}],
                }
            ]
        },
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [{"targets": addresses}],
                **(
                    {"authorization": {"type": "Bearer", "credentials_file": str(token)}}
                    if token
                    else {}
                ),
            }
            for job, addresses in targets.items()
            for token in [(scrape_tokens or {}).get(job)]
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config, sort_keys=False))
    if alertmanager_config is None:
        # Locally, alerts are shown, not delivered: one receiver without integrations.
        alertmanager_config = {
            "route": {"receiver": "local", "group_by": ["alertname", "journey", "channel"]},
            "receivers": [{"name": "local"}],
        }
    (directory / "alertmanager.yml").write_text(
        yaml.safe_dump(alertmanager_config, sort_keys=False)
    )
    processes = []
    for name, command in (
        (
            "prometheus",
            [
                prometheus_bin,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
                f"--web.config.file={web_file}",
                # 8 days and a little: the experience-KPI rules compare with the same hours
                # a week before (deploy/prometheus/rules/experience_kpis.yml)
                "--storage.tsdb.retention.time=9d",
            ],
        ),
        (
            "alertmanager",
            [
                alertmanager_bin,
                f"--config.file={directory / 'alertmanager.yml'}",
                f"--storage.path={directory / 'alertmanager'}",
                f"--web.listen-address=127.0.0.1:{alertmanager_port}",
                f"--web.config.file={web_file}",
                "--cluster.listen-address=",
            ],
        ),
    ):
        log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child writes it
        processes.append(
            subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, **child_process_options()
            )
        )
    return LocalMonitoring(
        f"http://127.0.0.1:{prometheus_port}",
        alertmanager_url,
        processes,
        username=USERNAME,
        password_file=password_file,
    )


_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_UNIT_MS["y"] = 365 * _UNIT_MS["d"]
# A duration in PromQL: a range or subquery ``[10m]``, ``[10m:1m]``, or after ``offset``.
_PROMQL_DURATION = re.compile(
    r"(?<=[\[:])(?:\d+(?:ms|[smhdwy]))+(?=[\]:])|(?<=offset )(?:\d+(?:ms|[smhdwy]))+"
)


def compress_duration(text: str, factor: float) -> str:
    """A Prometheus duration (``1h30m``) ``factor`` times shorter, in milliseconds if need be."""
    total = sum(int(n) * _UNIT_MS[unit] for n, unit in _DURATION.findall(text))
    if not total or _DURATION.sub("", text):
        raise ValueError(f"not a Prometheus duration: {text!r}")
    ms = max(1, round(total / factor))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def compress_rules(groups: dict[str, Any], factor: float) -> dict[str, Any]:
    """The rule file ``groups`` with every duration ``factor`` times shorter: group intervals,
    ``for``, and the ranges, subqueries and offsets of every expression.

    For demonstrations and tests that cannot wait hours for a six-hour baseline: at
    ``factor=60`` a minute of the rules' time passes in a second. The thresholds, labels and
    annotations are the shipped ones.
    """
    out: dict[str, Any] = {"groups": []}
    for group in groups["groups"]:
        group = dict(group)
        if "interval" in group:
            group["interval"] = compress_duration(group["interval"], factor)
        rules = []
        for rule in group["rules"]:
            rule = dict(rule)
            rule["expr"] = _PROMQL_DURATION.sub(
                lambda m: compress_duration(m.group(0), factor), rule["expr"]
            )
            if "for" in rule:
                rule["for"] = compress_duration(rule["for"], factor)
            rules.append(rule)
        group["rules"] = rules
        out["groups"].append(group)
    return out


def compress_alertmanager_route(route: dict[str, Any], factor: float) -> dict[str, Any]:
    """An Alertmanager route tree with its group wait/interval and repeat interval shorter."""
    route = dict(route)
    for key in ("group_wait", "group_interval", "repeat_interval"):
        if key in route:
            route[key] = compress_duration(route[key], factor)
    if "routes" in route:
        route["routes"] = [compress_alertmanager_route(r, factor) for r in route["routes"]]
    return route
