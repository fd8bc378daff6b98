"""Create the docker-compose stack's secrets (once; run again, it keeps what exists).

    python deploy/compose_secrets.py        # writes deploy/compose-secrets/ (never committed)
    docker compose --env-file deploy/compose-secrets/compose.env up -d

Every password is random. What it writes, all mode 0600 under ``deploy/compose-secrets/``:

* ``compose.env``: the variables docker-compose.yml reads (passwords of each Kafka role, each
  ClickHouse user, Grafana's admin, the PII hash key; ``JW_ACTION_SECRETS={}``, the actions
  agent's webhook secrets, for you to fill in: docs/actions.md); add ``JW_COLLECTOR_API_KEYS``
  yourself;
* ``web-admin-token``, ``web-read-token``: the sink's admin and read-only API tokens (sign in
  to the live page with one; ``Authorization: Bearer`` for the API);
* ``monitoring-password``: the basic-auth password of Prometheus and Alertmanager (user
  ``journeywatch``), read by Prometheus (to reach Alertmanager), Grafana and the sink;
* ``monitoring-web.yml``: their ``--web.config.file`` (the bcrypt hash of that password);
* ``kafka_jaas.conf``: the broker's own logins (controller: PLAIN, inter-broker: SCRAM admin);
* ``kafka-scram-users``: the SCRAM users written into the KRaft metadata when the broker's
  storage is formatted (``kafka-storage format --add-scram``): admin, collector, worker, sink,
  actions (the actions agent);
* ``kafka-admin.properties``: the admin's client settings, for the ACL job and for operators.

Needs Python 3 and ``bcrypt`` (in journeywatch's virtualenv: ``.venv/bin/python``).
"""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

import bcrypt

SECRETS = Path(__file__).resolve().parent / "compose-secrets"
MONITORING_USER = "journeywatch"
KAFKA_MECHANISM = "SCRAM-SHA-512"
# each role its own Kafka user, whose ACLs (deploy/kafka-broker/acls.sh) allow its topics only
KAFKA_USERS = ("admin", "collector", "worker", "sink", "actions")
# not generated: the operator's own values, a placeholder written when missing
PLACEHOLDERS = {
    # the actions agent's webhook secrets (receivers' tokens) by name, JSON: docs/actions.md
    "JW_ACTION_SECRETS": "{}",
}
GENERATED = (
    "JW_PII_HASH_KEY",
    "CLICKHOUSE_PASSWORD",  # the administrator: migrations
    "CLICKHOUSE_SINK_PASSWORD",  # jw_sink: writes
    "CLICKHOUSE_READER_PASSWORD",  # jw_reader: Grafana, analysts (read-only profile)
    "GRAFANA_ADMIN_PASSWORD",
    "MONITORING_PASSWORD",
    "KAFKA_CONTROLLER_PASSWORD",
    *(f"KAFKA_{user.upper()}_PASSWORD" for user in KAFKA_USERS),
)


def _read_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                key, value = line.split("=", 1)
                values[key.strip()] = value.strip()
    return values


def _write(path: Path, text: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


def generate(directory: Path = SECRETS) -> dict[str, str]:
    """Write every secret file under ``directory``; returns the variables of compose.env."""
    directory.mkdir(parents=True, exist_ok=True)
    env_file = directory / "compose.env"
    values = _read_env(env_file)
    for key in GENERATED:
        if not values.get(key):
            values[key] = (
                secrets.token_hex(32) if key == "JW_PII_HASH_KEY" else (secrets.token_urlsafe(24))
            )
    for key, placeholder in PLACEHOLDERS.items():
        values.setdefault(key, placeholder)
    lines = [
        "# docker compose --env-file deploy/compose-secrets/compose.env up -d (never commit it)",
        *(f"{key}={value}" for key, value in values.items()),
    ]
    if "JW_COLLECTOR_API_KEYS" not in values:
        lines.append(
            "# JW_COLLECTOR_API_KEYS="
            '{"web-sdk": {"key": "<32+ random characters>", "channels": ["web", "app"]}}'
        )
    _write(env_file, "\n".join(lines) + "\n")

    for role in ("admin", "read"):  # the sink's API tokens (sign-in for its pages and API)
        token = directory / f"web-{role}-token"
        if not token.exists() or not token.read_text().strip():
            _write(token, secrets.token_urlsafe(32))
        token.chmod(0o600)
    password = values["MONITORING_PASSWORD"]
    _write(directory / "monitoring-password", password)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(10)).decode()
    _write(
        directory / "monitoring-web.yml",
        f"# Prometheus and Alertmanager: every request needs basic auth\n"
        f"basic_auth_users:\n  {MONITORING_USER}: {hashed}\n",
    )
    controller = values["KAFKA_CONTROLLER_PASSWORD"]
    admin = values["KAFKA_ADMIN_PASSWORD"]
    _write(
        directory / "kafka_jaas.conf",
        "controller.KafkaServer {\n"
        "  org.apache.kafka.common.security.plain.PlainLoginModule required\n"
        f'  username="controller" password="{controller}" user_controller="{controller}";\n'
        "};\n"
        "sasl_plaintext.KafkaServer {\n"
        "  org.apache.kafka.common.security.scram.ScramLoginModule required\n"
        f'  username="admin" password="{admin}";\n'
        "};\n",
    )
    _write(
        directory / "kafka-scram-users",
        "".join(
            f"{KAFKA_MECHANISM}=[name={user},password={values[f'KAFKA_{user.upper()}_PASSWORD']}]\n"
            for user in KAFKA_USERS
        ),
    )
    _write(
        directory / "kafka-admin.properties",
        "security.protocol=SASL_PLAINTEXT\n"
        f"sasl.mechanism={KAFKA_MECHANISM}\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="admin" password="{admin}";\n',
    )
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=SECRETS, help="where to write them")
    args = parser.parse_args()
    os.umask(0o077)
    generate(args.dir)
    print(
        f"secrets in {args.dir}; start with: docker compose --env-file "
        f"{args.dir / 'compose.env'} up -d"
    )


if __name__ == "__main__":
    main()
