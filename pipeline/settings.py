"""One settings object for the whole product, read from ``JW_*`` environment variables.

It is built once at the entry point and passed down; nothing below reads the environment.
The reference table in docs/settings.md is generated from this class and checked in CI.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.contract import Channel

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class ApiKey(BaseModel):
    """One collector API key: the source it identifies and the channels it may send."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: SecretStr = Field(min_length=16)
    channels: tuple[Channel, ...] | None = None  # None: every channel


LOCAL_STATE_PREFIX = "faust-"  # data_dir/faust-<role>-<index>: a process's local state


# Faust's producer_max_batch_size for the workers (``Settings.producer_max_batch_bytes``)
PRODUCER_MAX_BATCH_BYTES = 512 * 1024


class Settings(BaseSettings):
    """journeywatch settings. Every field is also the environment variable ``JW_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="JW_", extra="ignore", frozen=True)

    # --- Kafka -----------------------------------------------------------------------------
    broker_url: str | None = Field(
        default=None,
        description="Kafka bootstrap servers, e.g. `kafka:9092` or `host1:9092,host2:9092`. "
        "Unset: `journeywatch run` starts the embedded Kafka-protocol broker.",
    )
    embedded_broker_port: int = Field(
        default=19092, description="Port of the embedded broker on 127.0.0.1 (when started)."
    )
    topic_prefix: str = Field(default="", description="Prefix for every topic name.")
    partitions: int = Field(
        default=4,
        ge=1,
        description="Partition count of every journeywatch topic; the ceiling of worker "
        "parallelism. Choose it up front: stateful topics cannot simply be repartitioned.",
    )
    replication_factor: int = Field(default=1, ge=1, description="Replication factor of topics.")
    consumer_session_timeout_s: float = Field(
        default=10.0, gt=0, description="Consumer-group session time-out (embedded: 3 s)."
    )
    consumer_heartbeat_s: float = Field(
        default=3.0, gt=0, description="Consumer heartbeat interval (embedded: 0.5 s)."
    )
    consumer_rebalance_timeout_s: float = Field(
        default=60.0, gt=0, description="Consumer rebalance time-out (embedded: 3 s)."
    )
    producer_max_batch_bytes: int = Field(
        default=PRODUCER_MAX_BATCH_BYTES,
        ge=16_384,
        le=900_000,
        description="Largest record batch a worker's producer builds (Faust's "
        "producer_max_batch_size; aiokafka's default is 16 KiB). A worker sends a fetch's "
        "outputs, state records and hand-off messages (about 1.2 KB per touchpoint) as record "
        "batches and awaits them: at 16 KiB a fetch of 2,000 touchpoints took some 150 produce "
        "requests, and a worker ran 1.4 times slower (docs/benchmarks.md). Keep it under the "
        "brokers' message.max.bytes (Apache Kafka's default: 1 MB).",
    )
    consumer_fetch_max_wait_ms: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Longest a worker's fetch waits at the broker for new records (embedded: "
        "25 ms: the embedded broker does not answer a waiting fetch when records arrive, so "
        "this is added to every hop's latency there; Apache Kafka answers at once).",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"] = Field(
        default="PLAINTEXT",
        description="How every Kafka client of journeywatch connects (docker-compose: "
        "`SASL_PLAINTEXT` with SCRAM, one user per role).",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] | None = Field(
        default=None,
        description="SASL mechanism (with `kafka_security_protocol` SASL_*), e.g. SCRAM-SHA-512.",
    )
    kafka_sasl_username: str | None = Field(
        default=None, description="SASL user of this process's role (collector, worker, sink)."
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None, description="SASL password of `kafka_sasl_username`."
    )

    # --- ClickHouse ------------------------------------------------------------------------
    clickhouse_dsn: str = Field(
        default="chdb:var/clickhouse",
        description="`chdb:relative/dir` or `chdb:///abs/dir` for the embedded, in-process "
        "ClickHouse; `http(s)://user:password@host:8123` for a ClickHouse server. "
        "(`chdb://x/y` would mean location `x`, database `y`: avoid.)",
    )
    clickhouse_database: str = Field(
        default="journeywatch", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Database name."
    )
    clickhouse_cluster: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$",
        description="ClickHouse cluster name (remote_servers). Set: migrations run ON CLUSTER "
        "with replicated `<table>_local` tables behind Distributed tables of the usual names.",
    )
    touchpoint_retention_days: int = Field(
        default=395, ge=1, description="Days of raw touchpoints kept in ClickHouse (TTL)."
    )
    sink_batch_size: int = Field(
        default=5000, ge=1, description="Most rows a sink writes to ClickHouse in one insert."
    )
    sink_batch_seconds: float = Field(
        default=0.5, gt=0, description="Longest a sink waits to fill a batch before writing."
    )

    # --- SQL for analysts (`journeywatch sql`, POST /api/v1/sql; docs/analyst-guide.md) -----
    sql_max_rows: int = Field(
        default=100_000,
        ge=1,
        description="Most rows an analyst's query may return (ClickHouse `max_result_rows`, "
        "`result_overflow_mode=throw`): a larger result is an error that says to add a LIMIT "
        "or aggregate, never a truncated answer.",
    )
    sql_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Longest an analyst's query may run (ClickHouse `max_execution_time`, "
        "`timeout_overflow_mode=throw`) before it stops with an error.",
    )
    sql_max_query_bytes: int = Field(
        default=65_536,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Longest query text accepted (ClickHouse `max_query_size`; the API's "
        "request body limit).",
    )
    sql_max_result_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="Most bytes (uncompressed, in ClickHouse) a query's result may hold "
        "(ClickHouse `max_result_bytes`).",
    )

    # --- Data protection: retention, personal data in free text --------------------------
    # (docs/operations/retention.md, docs/collector.md "Personal data in free text")
    journey_retention_days: int | None = Field(
        default=None,
        ge=1,
        description="Days of journey events, experience moments and journey states (tables "
        "`journey_events`, `experience_moments`, `journey_state_agg`) kept in ClickHouse (TTL, "
        "set at every sink start). Unset: `touchpoint_retention_days`.",
    )
    dead_letter_retention_days: int | None = Field(
        default=None,
        ge=1,
        description="Days of refused events and failed journey records (tables `failed_events`, "
        "`journey_errors`) kept in ClickHouse (TTL). Unset: `touchpoint_retention_days`.",
    )
    rollup_retention_days: int | None = Field(
        default=None,
        ge=1,
        description="Days of the per-minute and per-hour rollups (no identifiers in them) kept "
        "in ClickHouse (TTL); may be longer than the rest. Unset: `touchpoint_retention_days`.",
    )
    free_text_pii: Literal["redact", "hash", "off"] = Field(
        default="redact",
        description="E-mail addresses and phone numbers in free text (attribute values and "
        "names, `session_hint`, `source`) at the collector and the importer: `redact` "
        "(`[redacted-email]`, `[redacted-phone]`), `hash` (`[email:<keyed hash>]`, as "
        "`email_hash`), or `off`.",
    )

    # --- Processing ------------------------------------------------------------------------
    ingest_batch_size: int = Field(
        default=1000,
        ge=1,
        description="Most raw events the ingest agent validates and produces as one chunk (a "
        "fetch larger than this is processed in several).",
    )
    workers: int = Field(
        default=1, ge=1, description="Faust worker processes started by `journeywatch run`."
    )
    data_dir: Path = Field(
        default=Path("var"), description="Where workers keep local state (tables, logs)."
    )

    journeys_file: Path | None = Field(
        default=None,
        description="Journey definitions (YAML). Unset: the defaults shipped with journeywatch. "
        "Validated at start-up; `journeywatch journeys check FILE` reports every problem.",
    )
    allowed_lateness_s: float = Field(
        default=0.5,
        ge=0,
        description="How late (event time) a touchpoint may arrive and still be applied in "
        "order; a later one is applied on arrival and counted as late. Outputs wait this long "
        "(it bounds the event-to-output latency). Raise it to replay history faster than real "
        "time.",
    )
    channel_lateness_s: dict[Channel, float] = Field(
        default_factory=dict,
        description="Per channel, how late (event time) its touchpoints may reach journeywatch "
        "beyond `JW_ALLOWED_LATENESS_S`, as a JSON object in seconds, e.g. "
        '`{"store": 86400, "call_center": 3600}` for a point-of-sale export imported daily and '
        "a contact-centre feed sent hourly. A journey that such a channel can move on waits "
        "that much longer before it is reported dropped off, so the late touchpoints still "
        "reach it in time; without it the drop-off is reported and then retracted when a late "
        "touchpoint converts the journey. Channels not named: the lateness alone "
        '(docs/streaming-topology.md, "Late channels").',
    )
    state_write_version: int = Field(
        default=2,
        ge=1,
        le=2,
        description="The format journey workers write their saved state and hand-off records "
        "in. 2: journeys and stages by name (survives edits of the journeys file). 1: the "
        "format of releases before it (by position), which those releases can read: set 1 "
        "for the rolling restart that upgrades workers from such a release, then unset it in "
        "a second rolling restart once every worker runs the new code; do not edit the "
        "journeys file in between (docs/operations/upgrades.md).",
    )
    idle_after_s: float = Field(
        default=0.5,
        gt=0,
        description="A partition without input for this long advances its watermark with the "
        "wall clock, so drop-offs still fire when traffic stops.",
    )
    sweep_interval_s: float = Field(
        default=0.25,
        gt=0,
        description="How often each journey partition checks its deadlines and idle time.",
    )
    gc_thaw_interval_s: float = Field(
        default=600.0,
        ge=0,
        description="A journey worker hides the objects that outlive each batch (journey state, "
        "mostly) from Python's cyclic garbage collector, whose scans of them grew with the state "
        "(a full one took 1.2 s per million persons); this often, it lets one full collection "
        "look at them all (reference cycles that became garbage). 0: never hide them.",
    )
    table_standby_replicas: int = Field(
        default=0,
        ge=0,
        description="Workers that keep a warm copy of each journey-state partition (Faust "
        "standby replicas), so that a fail-over does not wait for the changelog to be read. "
        "Each copy costs its worker every state change through Faust's per-message path: at "
        "5,000 events/s on two workers, 1 raised each worker's CPU from 0.37 to 0.57 cores "
        "(docs/benchmarks.md).",
    )
    journey_batch_size: int = Field(
        default=2000,
        ge=1,
        description="Most input records the journey agent applies before it produces their "
        "outputs and saves its state (a fetch larger than this is processed in several).",
    )
    shutdown_timeout_s: float = Field(
        default=25.0,
        gt=0,
        description="After SIGTERM (or Ctrl-C), how long a worker or sink may take to stop "
        "cleanly (finish its batch, commit, leave the consumer group) before it exits anyway, "
        "with status 1; what it had not committed is read again by the next owner. Stopping "
        "can hang when the broker is gone. Keep it below the platform's grace period "
        "(docker-compose stop_grace_period 30 s, Kubernetes terminationGracePeriodSeconds "
        "60 s in deploy/).",
    )

    # --- HTTP ------------------------------------------------------------------------------
    web_host: str = Field(default="127.0.0.1", description="Interface the web servers bind.")
    status_port: int = Field(
        default=8080,
        description="Port of the sink process: live page, journey maps, /api, /metrics, "
        "/livez, /readyz.",
    )
    live_window_minutes: int = Field(
        default=15,
        ge=1,
        le=1440,
        description="Minutes the live page (`/`) shows, ending at the newest touchpoint.",
    )
    live_baseline_minutes: int = Field(
        default=360,
        ge=1,
        le=10_080,
        description="Minutes before the live window that its rates are compared with.",
    )
    live_refresh_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often the live page's figures are recomputed and pushed to browsers.",
    )
    alertmanager_url: str | None = Field(
        default=None,
        description="Alertmanager whose firing alerts the live page shows (e.g. "
        "http://alertmanager:9093). `journeywatch run` sets it to its local Alertmanager.",
    )
    alertmanager_username: str = Field(
        default="journeywatch",
        description="Basic-auth user for `alertmanager_url` (Alertmanager's web config).",
    )
    alertmanager_password: SecretStr | None = Field(
        default=None,
        description="Basic-auth password for `alertmanager_url`. Unset, and without "
        "`alertmanager_password_file`, for an Alertmanager on loopback: the password "
        "`journeywatch run` generated for its local one (data_dir/monitoring/web.password).",
    )
    alertmanager_password_file: Path | None = Field(
        default=None,
        description="File holding the basic-auth password for `alertmanager_url` (a mounted "
        "secret), instead of `alertmanager_password`.",
    )
    grafana_url: str | None = Field(
        default=None,
        description="Grafana as the browser reaches it (e.g. http://grafana.example.com): the "
        "live page links each alert to its dashboard there.",
    )
    worker_web_port: int = Field(
        default=6066,
        description="First port of the workers' /metrics, /livez, /readyz (one port each).",
    )

    # --- Sign-in for the sink's pages and API (docs/operations/security.md) ------------------
    web_auth: Literal["tokens", "proxy", "off"] = Field(
        default="tokens",
        description="How the sink's pages and `/api/v1` are protected. `tokens`: an API token "
        "(`Authorization: Bearer`) or a browser session from the sign-in page (`/signin`). "
        "`proxy`: also a single sign-on proxy in front (oauth2-proxy), whose user header is "
        "trusted from `web_trusted_proxies` only. `off`: no sign-in at all (everyone is "
        "admin): only behind something else that signs people in. Without tokens the sink "
        "refuses a non-loopback `web_host`; on loopback it generates an admin token into "
        "data_dir/web-admin.token (mode 0600).",
    )
    web_admin_token: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="API token of the admin role (reads everything, and may change or erase "
        "data). At least 16 characters; 32 random ones recommended. Never logged.",
    )
    web_admin_token_file: Path | None = Field(
        default=None,
        description="File holding `web_admin_token` (a mounted secret), instead of it.",
    )
    web_read_token: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="API token of the read-only role (pages and read APIs; 403 on admin "
        "endpoints). At least 16 characters.",
    )
    web_read_token_file: Path | None = Field(
        default=None,
        description="File holding `web_read_token` (a mounted secret), instead of it.",
    )
    web_trusted_proxies: list[str] = Field(
        default_factory=list,
        description='With `web_auth` proxy: the addresses (JSON list, e.g. `["10.0.0.7", '
        '"10.1.0.0/16"]`) of the proxies whose `web_proxy_user_header` is believed. The '
        "header from any other address is ignored.",
    )
    web_proxy_user_header: str = Field(
        default="X-Forwarded-User",
        pattern=r"^[A-Za-z0-9-]+$",
        description="Header naming the signed-in user, set by the trusted proxy "
        "(oauth2-proxy: `X-Forwarded-User` with `--pass-user-headers`, or "
        "`X-Auth-Request-User` with `--set-xauthrequest`).",
    )
    web_proxy_admins: list[str] = Field(
        default_factory=list,
        description="Users (as the proxy names them) given the admin role; every other user "
        'the proxy signs in is read-only. `["*"]`: everyone.',
    )
    web_session_hours: float = Field(
        default=12.0,
        gt=0,
        le=24 * 30,
        description="How long a browser session from the sign-in page lasts.",
    )
    web_cookie_secure: bool = Field(
        default=True,
        description="Session cookies are `Secure` (sent over HTTPS only; browsers also send "
        "them to http://127.0.0.1 and localhost). Set false only to serve the pages over "
        "plain HTTP to other machines, which exposes the cookie on the network.",
    )
    web_protect_health: bool = Field(
        default=False,
        description="`/metrics`, `/livez` and `/readyz` of the sink also need a token (any "
        "role): give Prometheus `authorization: {credentials_file: ...}`. Unset: open, for "
        "probes and scrapers (they show no customer data).",
    )

    # --- HTTP collector ----------------------------------------------------------------
    collector_port: int = Field(default=8090, description="Port of `journeywatch collector`.")
    collector_api_keys: dict[str, ApiKey] = Field(
        default_factory=dict,
        description='Per-source API keys as JSON: `{"web-sdk": {"key": "...", "channels": '
        '["web", "app"]}}`. `journeywatch run` creates a `demo` key under data_dir when unset.',
    )
    collector_max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest request body the collector accepts."
    )
    collector_max_batch: int = Field(
        default=500, ge=1, description="Most events in one collector request."
    )
    collector_body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a client has to send a whole request body to the collector (and "
        "to the sink's lookup API) before it gets 408.",
    )
    webhook_secrets: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Secrets of signed survey webhooks as JSON, by the name a source's "
        '`webhook.signature.secret` gives in the journeys file: `{"delighted": "..."}` '
        "(docs/sources.md). Never logged.",
    )
    webhook_secrets_file: Path | None = Field(
        default=None,
        description="JSON file holding `webhook_secrets` (a mounted secret), instead of it.",
    )
    phone_default_country_code: str = Field(
        default="",
        pattern=r"^\d{0,3}$",
        description="Country calling code for national phone numbers before hashing (e.g. 44).",
    )

    # --- Local monitoring (embedded run) -------------------------------------------------
    local_monitoring: bool = Field(
        default=True,
        description="`journeywatch run` also starts Prometheus and Alertmanager with "
        "journeywatch's rules when their binaries are installed.",
    )
    prometheus_port: int = Field(default=9090, description="Port of the local Prometheus.")
    alertmanager_port: int = Field(default=9093, description="Port of the local Alertmanager.")

    # --- Supervision (embedded run) --------------------------------------------------------
    run_restart_initial_s: float = Field(
        default=0.5,
        gt=0,
        description="`journeywatch run` starts a sink, worker or collector that died again "
        "after this delay, doubled at each quick crash up to `run_restart_max_s`.",
    )
    run_restart_max_s: float = Field(
        default=10.0,
        gt=0,
        description="Longest delay before `journeywatch run` restarts a process.",
    )
    run_crash_limit: int = Field(
        default=5,
        ge=1,
        description="This many crashes of one process within `run_crash_window_s` stop "
        "`journeywatch run` (naming the process and its last log lines); a process that stayed "
        "up that long starts its back-off again from `run_restart_initial_s`.",
    )
    run_crash_window_s: float = Field(
        default=60.0, gt=0, description="The window of `run_crash_limit`, in seconds."
    )

    # --- Simulator (embedded run) ----------------------------------------------------------
    simulate_rate: float = Field(
        default=50.0, ge=0, description="Events per second the embedded simulator produces."
    )
    simulate_seed: int | None = Field(
        default=None,
        description="Seed of the embedded simulator. Unset: a new one each run (shown in the "
        "banner), so that event ids never repeat across runs: ClickHouse keeps one row per "
        "event id, and a run with the same seed as before resends the same events.",
    )

    run_demo: bool = Field(
        default=True,
        description="`journeywatch run` plays the demo (docs/operations/embedded-run.md): two "
        "hours of simulated history backfilled at start, then customers walking every journey "
        "60 times faster than real ones, with demo time-outs (drop-offs within a minute), alert "
        "rules compressed as much, and a scheduled incident. Only `journeywatch run` reads it; "
        "false: the steady simulator with the configured journeys and rules.",
    )
    demo_incident_after_s: float = Field(
        default=30.0,
        ge=0,
        description="Seconds after the demo's live traffic starts that its scheduled incident "
        "(a payment-provider outage, one minute) begins; 0: none (start one by hand with "
        "`journeywatch simulate incident NAME`).",
    )
    demo_incident_every_s: float = Field(
        default=600.0,
        gt=0,
        description="Seconds between the starts of the demo's scheduled incidents.",
    )

    # --- Security --------------------------------------------------------------------------
    pii_hash_key: SecretStr | None = Field(
        default=None,
        description="Key of the HMAC that hashes e-mail addresses and phone numbers. Required "
        "in production; `journeywatch run` creates a random one under data_dir when unset.",
    )

    # --- Closed-loop actions (docs/actions.md) --------------------------------------------------
    actions_enabled: bool = Field(
        default=True,
        description="Whether `journeywatch actions` (the actions agent) delivers the journeys "
        "file's `actions:`; false: it starts, delivers nothing and reads nothing (turn actions "
        "off without editing the file).",
    )
    actions_web_port: int = Field(
        default=6090,
        description="Port of the actions agent's /metrics, /livez, /readyz.",
    )
    action_secrets: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Secret header values of action webhooks as JSON, by the name a header's "
        '`{secret: NAME}` gives in the journeys file: `{"helpdesk_token": "..."}`. Never logged.',
    )
    action_max_attempts: int = Field(
        default=6,
        ge=1,
        description="Tries of one action webhook (5xx, 408, 429, time-out, no connection) "
        "before it goes to `actions.dlq`.",
    )
    action_retry_initial_s: float = Field(
        default=1.0,
        gt=0,
        description="Wait before an action's second try; doubled at each try up to "
        "`action_retry_max_s`.",
    )
    action_retry_max_s: float = Field(
        default=30.0, gt=0, description="Longest wait between two tries of an action."
    )
    action_memory_days: float = Field(
        default=7.0,
        gt=0,
        description="How long (in event time, behind a customer's newest trigger) the actions "
        "agent remembers each trigger it acted on, so that it never acts twice; a trigger "
        "older than that is `stale` and not acted on. Keep it at least the output topics' "
        "retention and every rule's `at_most_once_per`.",
    )

    # --- Logging ---------------------------------------------------------------------------
    log_level: LogLevel = Field(
        default="WARNING",
        description="Log level. Logs are JSON, one object per line on stderr; a warning or "
        "error repeated within 30 s is written once, and the next one says how many were left "
        "out (`repeated`): a broker outage does not flood them.",
    )

    @field_validator("channel_lateness_s")
    @classmethod
    def _lateness_not_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for channel, seconds in value.items():
            if seconds < 0:
                raise ValueError(f"channel_lateness_s.{channel}: {seconds} is negative")
        return value

    @field_validator("clickhouse_dsn")
    @classmethod
    def _known_dsn(cls, value: str) -> str:
        if not value.startswith(("chdb:", "http://", "https://")):
            raise ValueError("clickhouse_dsn must start with chdb:, http:// or https://")
        if value.startswith("chdb://") and not value.startswith("chdb:///"):
            raise ValueError(
                "chdb://x/y is read as location x, database y; write chdb:relative/dir or "
                "chdb:///absolute/dir"
            )
        return value

    @property
    def touchpoint_max_age(self) -> timedelta:
        """The oldest touchpoint accepted: one the table's time-to-live would not delete at
        once (refused as ``too_old`` at the collector, the importer and the ingest)."""
        return timedelta(days=self.touchpoint_retention_days)

    def retention_days(self) -> dict[str, int]:
        """Days kept in ClickHouse, per kind of data: ``touchpoints``, ``journeys``,
        ``dead_letters``, ``rollups`` (sinks/clickhouse/retention.py names each one's tables)."""
        default = self.touchpoint_retention_days
        return {
            "touchpoints": default,
            "journeys": self.journey_retention_days or default,
            "dead_letters": self.dead_letter_retention_days or default,
            "rollups": self.rollup_retention_days or default,
        }

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url is None

    @property
    def embedded_clickhouse(self) -> bool:
        return self.clickhouse_dsn.startswith("chdb:")

    def topic(self, name: str) -> str:
        """The full name of one of journeywatch's topics."""
        return f"{self.topic_prefix}{name}"

    def local_state_dir(self, role: str, index: int) -> Path:
        """Where a worker or sink process keeps its Faust state (RocksDB tables, the changelog
        offsets they reached): it belongs to the broker whose topics it was built from."""
        return self.data_dir / f"{LOCAL_STATE_PREFIX}{role}-{index}"

    def local_state_dirs(self) -> list[Path]:
        """Every process's local state under ``data_dir``."""
        return sorted(self.data_dir.glob(f"{LOCAL_STATE_PREFIX}*"))


def embedded_profile(settings: Settings, broker_url: str) -> Settings:
    """The settings an embedded run hands to its child processes.

    Short consumer-group time-outs: the embedded broker makes a join wait about half the
    session time-out. Short fetch waits: it does not answer a waiting fetch when records
    arrive.
    """
    return settings.model_copy(
        update={
            "broker_url": broker_url,
            "consumer_session_timeout_s": min(settings.consumer_session_timeout_s, 3.0),
            "consumer_heartbeat_s": min(settings.consumer_heartbeat_s, 0.5),
            "consumer_rebalance_timeout_s": min(settings.consumer_rebalance_timeout_s, 3.0),
            "consumer_fetch_max_wait_ms": min(settings.consumer_fetch_max_wait_ms, 25),
        }
    )


def to_environment(settings: Settings) -> dict[str, str]:
    """Settings as ``JW_*`` variables, to hand to a child process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif name in ("webhook_secrets", "action_secrets"):
            value = json.dumps({k: v.get_secret_value() for k, v in value.items()})
        elif name == "collector_api_keys":
            value = json.dumps(
                {
                    source: {
                        "key": key.key.get_secret_value(),
                        "channels": list(key.channels) if key.channels is not None else None,
                    }
                    for source, key in settings.collector_api_keys.items()
                }
            )
        elif isinstance(value, list):  # JSON, as pydantic-settings reads lists
            value = json.dumps(value)
        elif name == "channel_lateness_s":
            value = json.dumps(
                {channel.value: seconds for channel, seconds in settings.channel_lateness_s.items()}
            )
        env[f"JW_{name.upper()}"] = str(value)
    return env


def settings_reference() -> str:
    """The settings reference table for docs/settings.md."""
    lines = [
        "| Variable | Default | Description |",
        "| --- | --- | --- |",
    ]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "unset" if default is None else f"`{default}`"
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| `JW_{name.upper()}` | {shown} | {description} |")
    return "\n".join(lines) + "\n"
