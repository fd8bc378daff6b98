"""``journeywatch run``: the whole product on one machine.

Starts, in order: the embedded broker (unless ``JW_BROKER_URL`` names one), the topics, the
sink process (owns ClickHouse, applies migrations, serves the status page), the Faust worker
processes and the simulator. Waits until every process is ready, prints where to look, and
on Ctrl-C or SIGTERM stops everything in reverse order, the broker last.

While it runs it supervises (docs/operations/embedded-run.md): a sink, worker, collector,
Prometheus or Alertmanager that dies is started again after a back-off, and the simulator
thread too, each restart said on the run's output and written to ``JW_DATA_DIR/run-status.json``
(streams/supervisor.py); a process that crash-loops stops the run with its last log lines of
this run (logs are rotated at the start of each run). The embedded broker keeps everything in
memory: if it dies the run stops, saying so.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, cast

from pydantic import SecretStr

from pipeline.demo import INCIDENT_MS, SPEED, ActiveIncident, DemoTraffic
from pipeline.settings import ApiKey, Settings, embedded_profile, to_environment
from streams.broker import EmbeddedBroker
from streams.demo import (
    Backfill,
    DemoThread,
    backfill,
    demo_rule_files,
    demo_settings,
    incident_time_text,
    incident_times,
    map_link,
)
from streams.monitoring import (
    LocalMonitoring,
    binaries,
    secret_file,
    start_local_monitoring,
    write_private,
)
from streams.process import child_process_options
from streams.producer import SimulatorThread
from streams.supervisor import (
    RUN_STATUS_FILE,
    CrashHistory,
    RestartPolicy,
    describe_exit,
    rotate_logs,
    utc_now,
    write_status,
)
from streams.topics import ensure_topics
from streams.webauth import (
    client_token,
    configured_tokens,
    generated_token_path,
    startup_problem,
    with_generated_token,
)


def _has_actions(settings: Settings) -> bool:
    """Whether the journeys file has closed-loop actions: then the run starts their agent."""
    from pipeline.definitions import load_catalog

    return bool(load_catalog(settings.journeys_file).actions)


class RuntimeErrorExit(RuntimeError):
    """The runtime could not start; the message tells the user what to do."""


def busy_ports(settings: Settings) -> list[str]:
    """The ports an embedded run would listen on that something else holds already, each
    with the setting that moves it (checked before anything starts: otherwise the first
    process to fail says so deep in its log)."""
    host = settings.web_host
    wanted = [
        (host, settings.status_port, "JW_STATUS_PORT, the live page"),
        *(
            (host, settings.worker_web_port + i, f"JW_WORKER_WEB_PORT + {i}, worker {i}")
            for i in range(settings.workers)
        ),
        (host, settings.collector_port, "JW_COLLECTOR_PORT, the collector"),
    ]
    if settings.embedded_broker:
        wanted.append(
            ("127.0.0.1", settings.embedded_broker_port, "JW_EMBEDDED_BROKER_PORT, Kafka")
        )
    if settings.local_monitoring and binaries():
        wanted += [
            ("127.0.0.1", settings.prometheus_port, "JW_PROMETHEUS_PORT, Prometheus"),
            ("127.0.0.1", settings.alertmanager_port, "JW_ALERTMANAGER_PORT, Alertmanager"),
        ]
    return [f"{port} ({what})" for bind, port, what in wanted if not _free(bind, port)]


def _free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class Child:
    """A supervised process: what starts it, and what happened to it in this run."""

    name: str
    command: list[str]
    env: dict[str, str] | None
    ready_url: str
    log_path: Path
    history: CrashHistory
    essential: bool = True  # a crash loop stops the run (else: restarts end, the run goes on)
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None
    started_at: float = 0.0  # monotonic
    state: str = "starting"  # starting, running, restarting, gave up, stopped
    restarts: int = 0
    last_exit: dict[str, Any] | None = None
    restart_at: float | None = None  # monotonic, while restarting


def http_json(url: str, timeout: float = 2.0, token: str | None = None) -> tuple[int, Any]:
    """GET ``url`` (with the sink's API ``token`` when given): the status and JSON body."""
    request = urllib.request.Request(url)  # noqa: S310 - loopback
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError, ValueError):
        return 0, None


def _secret_file(path: Path) -> str:
    """The key in ``path``, created with mode 0600 the first time (an existing one set to
    0600): see ``streams.monitoring.secret_file``."""
    return secret_file(path, lambda: secrets.token_hex(32))


def ensure_demo_api_key(settings: Settings) -> Settings:
    """An embedded run without collector keys gets a ``demo`` key kept under data_dir."""
    if settings.collector_api_keys:
        return settings
    key = ApiKey(key=SecretStr(_secret_file(settings.data_dir / "collector-demo.key")))
    return settings.model_copy(update={"collector_api_keys": {"demo": key}})


def ensure_pii_key(settings: Settings) -> Settings:
    """An embedded run without ``JW_PII_HASH_KEY`` gets a random key kept under data_dir."""
    if settings.pii_hash_key is not None:
        return settings
    key = SecretStr(_secret_file(settings.data_dir / "pii-hash.key"))
    return settings.model_copy(update={"pii_hash_key": key})


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class EmbeddedRuntime:
    def __init__(self, settings: Settings, out: IO[str] = sys.stdout) -> None:
        self.settings = settings
        self.out = out
        self.broker: EmbeddedBroker | None = None
        self.children: list[Child] = []
        self.simulator: SimulatorThread | DemoThread | None = None
        self.demo_traffic: DemoTraffic | None = None  # the backfill's, handed to the live demo
        self.backfilled: Backfill | None = None
        self.monitoring: LocalMonitoring | None = None
        self._lock: IO[str] | None = None  # data_dir/run.lock, held while this run lasts
        self._stop = threading.Event()
        self.policy = RestartPolicy(
            initial_s=settings.run_restart_initial_s,
            max_s=settings.run_restart_max_s,
            crash_limit=settings.run_crash_limit,
            window_s=settings.run_crash_window_s,
            stable_s=settings.run_crash_window_s,
        )
        self.status_path = settings.data_dir / RUN_STATUS_FILE
        self.state = "starting"
        self.failure: str | None = None
        self._simulator_record = Child(
            "simulator", [], None, "", Path(), CrashHistory(self.policy), essential=False
        )
        self._status_dirty = False
        self.api_token: str | None = None  # what the run's own requests to the sink send

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # --- start ----------------------------------------------------------------------------
    def start(self) -> None:
        busy = busy_ports(self.settings)
        if busy:
            raise RuntimeErrorExit(
                "ports in use by another process (another journeywatch run?): "
                + "; ".join(busy)
                + ". Stop that process, or choose other ports with these settings."
            )
        problem = startup_problem(self.settings)
        if problem:
            raise RuntimeErrorExit(problem)
        self._lock_data_dir(self.settings.data_dir)
        settings = with_generated_token(ensure_demo_api_key(ensure_pii_key(self.settings)))
        self.api_token = client_token(settings)
        self.log_dir = settings.data_dir / "logs"
        self.log_dir.mkdir(exist_ok=True)
        # One log file per process per run: the last lines shown when a process fails are
        # this run's (the previous run's logs are kept as NAME.log.1).
        rotate_logs(self.log_dir)
        self._write_status()
        if settings.embedded_broker:
            # The embedded broker starts empty: the tables and offsets the workers kept from a
            # previous run describe topics that are gone, and Faust refuses to recover them.
            # Only here, at the start of a run: a worker restarted within the run keeps its
            # state (its changelog topics still exist).
            for stale in settings.local_state_dirs():
                shutil.rmtree(stale)
                self.say(f"Cleared {stale} (local state of a previous embedded run).")
            self.broker = EmbeddedBroker(settings.embedded_broker_port, self.log_dir / "broker.log")
            self.broker.start()
            settings = embedded_profile(settings, self.broker.url)
        if settings.local_monitoring and binaries() and settings.alertmanager_url is None:
            # the live page shows what the local Alertmanager (started below) has firing
            settings = settings.model_copy(
                update={"alertmanager_url": f"http://127.0.0.1:{settings.alertmanager_port}"}
            )
        if self.demo:
            settings = demo_settings(settings)
        self.settings = settings
        ensure_topics(settings)
        sink_base = f"http://127.0.0.1:{settings.status_port}"
        self._spawn("sink", ["sink"], f"{sink_base}/readyz")
        for index in range(settings.workers):
            port = settings.worker_web_port + index
            self._spawn(
                f"worker-{index}",
                ["worker", "--index", str(index)],
                f"http://127.0.0.1:{port}/readyz",
            )
        self._spawn(
            "collector", ["collector"], f"http://127.0.0.1:{settings.collector_port}/readyz"
        )
        if settings.actions_enabled and _has_actions(settings):  # docs/actions.md
            self._spawn(
                "actions",
                ["actions", "run"],
                f"http://127.0.0.1:{settings.actions_web_port}/readyz",
            )
        self._wait_ready(timeout_s=180.0)
        if self.demo and not self._stop.is_set():
            self._backfill()
        if settings.local_monitoring:
            scrape_tokens = {}
            if settings.web_protect_health and self.api_token:  # the sink's /metrics wants it
                token_file = settings.data_dir / "monitoring" / "sink-scrape.token"
                write_private(token_file, self.api_token)
                scrape_tokens["journeywatch-sink"] = token_file
            self.monitoring = start_local_monitoring(
                settings.data_dir / "monitoring",
                {
                    "journeywatch-sink": [f"127.0.0.1:{settings.status_port}"],
                    "journeywatch-worker": [
                        f"127.0.0.1:{settings.worker_web_port + i}" for i in range(settings.workers)
                    ],
                    "journeywatch-collector": [f"127.0.0.1:{settings.collector_port}"],
                    **(
                        {"journeywatch-actions": [f"127.0.0.1:{settings.actions_web_port}"]}
                        if any(c.name == "actions" for c in self.children)
                        else {}
                    ),
                },
                settings.prometheus_port,
                settings.alertmanager_port,
                self.log_dir,
                scrape_tokens=scrape_tokens,
                # the demo's rules see an hour in a minute: scraped and evaluated each second
                rule_files=demo_rule_files(settings) if self.demo else None,
                scrape_interval="1s" if self.demo else "5s",
            )
            if self.monitoring:
                self._adopt_monitoring(self.monitoring)
        if settings.simulate_rate > 0:
            self._start_simulator(settings.simulate_seed)
        if not self._stop.is_set():
            self.state = "running"
            self._write_status()

    def _lock_data_dir(self, data_dir: Path) -> None:
        """One run per data directory: a second would clear the first's worker state and open
        its ClickHouse directory (chdb allows one process)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = open(data_dir / "run.lock", "a+")  # noqa: SIM115 - held until stop()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            raise RuntimeErrorExit(
                f"another journeywatch run (pid {holder}) uses {data_dir}: stop it, or give "
                "this one another directory with JW_DATA_DIR"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def _spawn(self, name: str, args: list[str], ready_url: str) -> None:
        env = {**os.environ, **to_environment(self.settings), "PYTHONUNBUFFERED": "1"}
        child = Child(
            name,
            [sys.executable, "-m", "streams.cli", *args],
            env,
            ready_url,
            self.log_dir / f"{name}.log",
            CrashHistory(self.policy),
        )
        self.children.append(child)
        self._launch(child)

    def _launch(self, child: Child) -> None:
        log_file = open(child.log_path, "ab")  # noqa: SIM115 - closed when the process ends
        again = f" (restart {child.restarts})" if child.restarts else ""
        log_file.write(
            f"--- journeywatch run: {child.name} started{again} at {utc_now()}\n".encode()
        )
        log_file.flush()
        child.process = subprocess.Popen(
            child.command,
            env=child.env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            **child_process_options(),
        )
        child.log_file = log_file
        child.started_at = time.monotonic()
        child.state = "starting"
        child.restart_at = None
        self._status_dirty = True

    def _adopt_monitoring(self, monitoring: LocalMonitoring) -> None:
        """Supervise Prometheus and Alertmanager like the others (started in that order), but
        as optional: when one crash-loops the run goes on without it, saying so."""
        for name, process in zip(
            ("prometheus", "alertmanager"), monitoring.processes, strict=False
        ):
            child = Child(
                name,
                [str(arg) for arg in cast("list[Any]", process.args)],
                None,
                "",  # up is ready: their HTTP endpoints may ask for credentials
                self.log_dir / f"{name}.log",
                CrashHistory(self.policy),
                essential=False,
                process=process,
                started_at=time.monotonic(),
            )
            self.children.append(child)
        self._status_dirty = True

    @property
    def demo(self) -> bool:
        """The run plays the demo (JW_RUN_DEMO, with simulated traffic)."""
        return self.settings.run_demo and self.settings.simulate_rate > 0

    def _backfill(self) -> None:
        """The last hours of the demo's traffic, in ClickHouse before live traffic starts (and
        before Prometheus, whose rates would take the burst for a spike)."""
        self.say("Demo: backfilling the last 2 hours of simulated traffic...")
        stats_url = f"http://127.0.0.1:{self.settings.status_port}/api/v1/stats"

        def stored() -> int | None:
            status, stats = http_json(stats_url, token=self.api_token)
            return int(stats["touchpoints"]) if status == 200 and stats else None

        self.demo_traffic = DemoTraffic(
            self.settings.simulate_seed
            if self.settings.simulate_seed is not None
            else secrets.randbits(31)
        )
        self.backfilled = backfill(self.settings, self.demo_traffic, stored)
        self.say(
            f"Demo: {self.backfilled.events:,} touchpoints of the last "
            f"{self.backfilled.hours:g} hours in ClickHouse after {self.backfilled.seconds:.0f} s."
        )

    def _start_simulator(self, seed: int | None) -> None:
        if self.demo:
            traffic, self.demo_traffic = self.demo_traffic, None  # only the first start's
            if traffic is None and seed is None:
                seed = secrets.randbits(31)
            self.simulator = DemoThread(self.settings, traffic, seed, say=self.say)
        else:
            self.simulator = SimulatorThread(self.settings, self.settings.simulate_rate, seed)
        self.simulator.start()
        record = self._simulator_record
        record.started_at = time.monotonic()
        record.state = "running"
        record.restart_at = None
        self._status_dirty = True

    # --- supervision ----------------------------------------------------------------------
    def supervise(self) -> None:
        """One round: restart what is due, notice what exited or became ready, check the
        broker and the simulator, and write the status file if anything changed."""
        now = time.monotonic()
        for child in self.children:
            if child.state in ("gave up", "stopped"):
                continue
            if child.restart_at is not None:
                if now >= child.restart_at and not self._stop.is_set():
                    self._launch(child)
                continue
            assert child.process is not None
            code = child.process.poll()
            if code is None:
                if child.state == "starting" and (
                    not child.ready_url or http_json(child.ready_url, 1.0, self.api_token)[0] == 200
                ):
                    child.state = "running"
                    self._status_dirty = True
                continue
            self._exited(child, code, now)
        self._check_broker()
        self._check_simulator(now)
        if self._status_dirty:
            self._write_status()

    def _exited(self, child: Child, code: int, now: float) -> None:
        if child.log_file is not None:
            child.log_file.close()
            child.log_file = None
        uptime = now - child.started_at
        pid = child.process.pid if child.process else "?"
        delay = self._crashed(child, now, code, describe_exit(code))
        if delay is None:
            message = (
                f"the {child.name} process crashed {child.history.recent} times within "
                f"{self.policy.window_s:g} s (JW_RUN_CRASH_LIMIT, JW_RUN_CRASH_WINDOW_S), the "
                f"last with {describe_exit(code)}"
            )
            if child.essential:
                raise RuntimeErrorExit(
                    f"{message}; journeywatch run stops. Last lines of {child.log_path} "
                    f"(this run):\n{_tail(child.log_path)}"
                )
            self.say(f"journeywatch: {message}; not restarting it, the run goes on without it.")
            return
        self.say(
            f"journeywatch: {child.name} (pid {pid}) exited with {describe_exit(code)} after "
            f"{uptime:.1f} s; restart {child.restarts} in {delay:g} s (log: {child.log_path})"
        )

    def _crashed(
        self, record: Child, now: float, code: int | None, description: str
    ) -> float | None:
        """Record an exit of ``record`` (a child or the simulator): the delay before it starts
        again, or None when it is in a crash loop (its state is then "gave up")."""
        record.last_exit = {"code": code, "description": description, "at": utc_now()}
        delay = record.history.crashed(now, now - record.started_at)
        self._status_dirty = True
        if delay is None:
            record.state = "gave up"
            return None
        record.state = "restarting"
        record.restarts += 1
        record.restart_at = now + delay
        return delay

    def _check_broker(self) -> None:
        process = self.broker._process if self.broker else None  # no public poll()
        code = process.poll() if process else None
        if code is None:
            return
        raise RuntimeErrorExit(
            f"the embedded broker exited with {describe_exit(code)}. It keeps every topic in "
            "memory only, so the topics, the consumer offsets and every event not yet in "
            "ClickHouse went with it: journeywatch run stops (ClickHouse keeps what it stored). "
            "Start it again; a broker that survives restarts is Kafka (JW_BROKER_URL). "
            f"Last lines of {self.log_dir / 'broker.log'} (this run):\n"
            f"{_tail(self.log_dir / 'broker.log')}"
        )

    def _check_simulator(self, now: float) -> None:
        record = self._simulator_record
        if self.simulator is None or record.state == "gave up":
            return
        if record.restart_at is not None:
            if now >= record.restart_at and not self._stop.is_set():
                # a fresh seed: the same one would resend event ids ClickHouse already holds
                self._start_simulator(None)
            return
        if self.simulator.is_alive() and self.simulator.error is None:
            return
        error = self.simulator.error
        self.simulator.stop()
        delay = self._crashed(record, now, None, f"{error!r}")
        if delay is None:
            self.say(
                f"journeywatch: the simulator failed {record.history.recent} times within "
                f"{self.policy.window_s:g} s, the last with {error!r}; not restarting it, "
                "the run goes on without simulated traffic."
            )
            return
        self.say(
            f"journeywatch: the simulator stopped ({error!r}); restart {record.restarts} in "
            f"{delay:g} s"
        )

    def _write_status(self) -> None:
        if self._lock is None:
            return  # the data directory is not (or no longer) this run's
        processes: dict[str, Any] = {}
        for child in [*self.children, self._simulator_record]:
            if child is self._simulator_record and self.simulator is None:
                continue
            processes[child.name] = {
                "pid": child.process.pid if child.process else None,
                "state": child.state,
                "restarts": child.restarts,
                "last_exit": child.last_exit,
            }
        status = {
            "pid": os.getpid(),
            "state": self.state,
            "failure": self.failure,
            "updated_at": utc_now(),
            "broker": (
                {"pid": self.broker.pid, "embedded": True, "url": self.broker.url}
                if self.broker
                else None
            ),
            "processes": processes,
        }
        with contextlib.suppress(OSError):
            write_status(self.status_path, status)
            self._status_dirty = False

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._stop.is_set():
            self.supervise()
            pending = [c for c in self.children if c.state != "running"]
            if not pending:
                return
            if time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending)
                raise RuntimeErrorExit(
                    f"not ready after {timeout_s:.0f} s: {names}; see {self.log_dir}"
                )
            self._stop.wait(0.25)

    def banner(self) -> str:
        s = self.settings
        base = f"http://127.0.0.1:{s.status_port}"
        workers = ", ".join(
            f"http://127.0.0.1:{s.worker_web_port + i}/metrics" for i in range(s.workers)
        )
        broker = f"{s.broker_url} (embedded, in memory)" if self.broker else str(s.broker_url)
        collector = f"http://127.0.0.1:{s.collector_port}/v1/events"
        sources = ", ".join(sorted(s.collector_api_keys))
        key_hint = (
            f"key in {s.data_dir / 'collector-demo.key'}"
            if "demo" in s.collector_api_keys
            else f"keys from JW_COLLECTOR_API_KEYS ({sources})"
        )
        return "\n".join(
            [
                "journeywatch is running.",
                f"  Sign in       {base}/signin {self._sign_in_hint()}",
                f"  Live page     {base}/  (JSON: {base}/api/v1/live)",
                f"  Journey map   {base}/map",
                f"  Stats (JSON)  {base}/api/v1/stats",
                f"  Metrics       {base}/metrics (sink); {workers}",
                f"  Health        {base}/livez  {base}/readyz",
                f"  Collector     POST {collector} ({key_hint}; API: /openapi.json)",
                f"  Kafka         {broker}",
                *(
                    [
                        f"  Prometheus    {self.monitoring.prometheus_url} (journeywatch's rules)",
                        f"  Alertmanager  {self.monitoring.alertmanager_url}",
                        f"  Monitoring    sign in as {self.monitoring.username}, password in "
                        f"{self.monitoring.password_file} (anonymous requests get 401)",
                    ]
                    if self.monitoring
                    else [
                        "  Monitoring    add Prometheus and Alertmanager with: "
                        "apt-get install prometheus prometheus-alertmanager"
                    ]
                ),
                f"  ClickHouse    {s.clickhouse_dsn} database {s.clickhouse_database}",
                *self._demo_banner(base),
                f"  Logs          {self.log_dir}/",
                "Press Ctrl-C to stop.",
            ]
        )

    def _demo_banner(self, base: str) -> list[str]:
        """What the demo shows, and when (the steady simulator: its rate)."""
        s = self.settings
        seed = f" (seed {self.simulator.seed})" if self.simulator else ""
        if not isinstance(self.simulator, DemoThread):
            return [
                f"  Simulator     {s.simulate_rate:g} events/s into {s.topic('touchpoints.raw')}"
                + seed
            ]
        lines = [
            f"  Demo          customers act {SPEED} times faster than real ones{seed}; "
            f"journeys {s.journeys_file}",
            f"                alert rules {SPEED} times shorter (a 6-hour baseline in 6 min); "
            "JW_RUN_DEMO=false: the steady simulator",
        ]
        if self.backfilled:
            lines.append(
                f"  History       {self.backfilled.events:,} touchpoints of the last "
                f"{self.backfilled.hours:g} hours backfilled: the live page's baselines"
            )
        lines.append(
            "  Now           every journey and stage on web, app, call_center and store; "
            "drop-offs within a minute"
        )
        times = incident_times(self.simulator)
        if times:
            start, alert = times
            lines += [
                f"  Incident      payment_outage at {incident_time_text(start)} for 60 s, "
                f"again every {s.demo_incident_every_s:g} s",
                f"  Look at       {base}/ from {incident_time_text(alert)}: the drop-offs at "
                "online_purchase / payment, and JourneyDropOffSpike under Alerts",
                "                then the journey map's before/after: "
                + map_link(base, ActiveIncident("payment_outage", start, start + INCIDENT_MS)),
            ]
        lines.append(
            "  By hand       journeywatch simulate incident payment_outage "
            "(or app_checkout_crash, call_centre_understaffed, store_stockout)"
        )
        return lines

    def _sign_in_hint(self) -> str:
        """How to sign in (where the token is, never the token itself)."""
        s = self.settings
        if s.web_auth == "off":
            return "(no sign-in: JW_WEB_AUTH=off)"
        if s.web_auth == "proxy":
            return "(through your sign-on proxy; API tokens as configured)"
        configured = configured_tokens(s)
        if s.web_admin_token is None and s.web_admin_token_file is None and configured:
            return "with JW_WEB_READ_TOKEN (read-only; no admin token configured)"
        if s.web_admin_token_file is not None:
            return f"with the admin token in {s.web_admin_token_file}"
        if generated_token_path(s).exists() and configured.get("admin") == (
            generated_token_path(s).read_text().strip()
        ):
            return (
                f"with the admin token in {generated_token_path(s)} (generated; APIs: "
                f'-H "Authorization: Bearer $(cat {generated_token_path(s)})")'
            )
        return "with JW_WEB_ADMIN_TOKEN (or JW_WEB_READ_TOKEN)"

    # --- run ------------------------------------------------------------------------------
    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        self._stop.set()

    def watch(self, report_every_s: float = 10.0) -> None:
        """Until asked to stop: check the processes, report the ClickHouse row counts."""
        stats_url = f"http://127.0.0.1:{self.settings.status_port}/api/v1/stats"
        last_report = 0.0
        previous: int | None = None  # the first report: what ClickHouse already had
        while not self._stop.is_set():
            self.supervise()
            if time.monotonic() - last_report >= report_every_s:
                last_report = time.monotonic()
                status, stats = http_json(stats_url, token=self.api_token)
                if status == 200 and stats:
                    rows = int(stats["touchpoints"])
                    grown = "" if previous is None else f" (+{rows - previous:,})"
                    self.say(
                        f"ClickHouse: {rows:,} touchpoints{grown}, "
                        f"{int(stats['failed_events']):,} failed events"
                    )
                    previous = rows
            self._stop.wait(0.5)

    # --- stop -----------------------------------------------------------------------------
    def stop(self) -> None:
        self.state = "failed" if self.failure else "stopping"
        self._write_status()
        if self.simulator:
            self.simulator.stop()
            self.simulator.join(10)
        # Monitoring and the collector first, then the workers (they flush and commit), then
        # the sink, the broker last.
        for group in (
            [c for c in self.children if c.name in ("prometheus", "alertmanager")],
            [c for c in self.children if c.name == "collector"],
            [c for c in self.children if c.name.startswith("worker") or c.name == "actions"],
            [c for c in self.children if c.name == "sink"],
        ):
            for child in group:
                child.restart_at = None
                if child.process is not None and child.process.poll() is None:
                    child.process.send_signal(signal.SIGTERM)
            for child in group:
                if child.process is not None:
                    try:
                        child.process.wait(30)
                    except subprocess.TimeoutExpired:
                        child.process.kill()
                        child.process.wait()
                if child.log_file is not None:
                    child.log_file.close()
                    child.log_file = None
                if child.state != "gave up":
                    child.state = "stopped"
        if self.monitoring:
            self.monitoring.stop()  # what it started is stopped above; this closes the rest
        if self.broker:
            self.broker.stop()
        if not self.failure:
            self.state = "stopped"
        self._write_status()
        if self._lock is not None:
            self._lock.close()  # releases the data directory
            self._lock = None


def run(settings: Settings) -> int:
    runtime = EmbeddedRuntime(settings)
    previous = {
        sig: signal.signal(sig, runtime.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    code = 0
    try:
        runtime.say("Starting journeywatch (broker, sink, workers, simulator)...")
        runtime.start()
        if not runtime._stop.is_set():
            runtime.say(runtime.banner())
            runtime.watch()
    except RuntimeErrorExit as exc:
        runtime.failure = str(exc)
        print(f"journeywatch: {exc}", file=sys.stderr)
        code = 1
    except Exception as exc:
        runtime.failure = f"{type(exc).__name__}: {exc}"
        print(f"journeywatch: {runtime.failure}", file=sys.stderr)
        code = 1
    finally:
        runtime.say("Stopping...")
        with contextlib.suppress(Exception):
            runtime.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        runtime.say("Stopped.")
    return code
