"""The docker-compose stack cannot run here (no Docker engine): check it statically."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import click
import compose_spec
import pytest
import yaml

from pipeline.settings import Settings
from streams.cli import main as cli
from tests.helpers import REPO

COMPOSE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # PyYAML resolves the `<<` merge keys the way docker compose does.
    return dict(yaml.safe_load(COMPOSE.read_text()))


def test_the_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    compose_spec.PyCompose.from_json(json.dumps(compose)).validate()


def test_the_stack_has_every_production_component(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {
        "kafka",
        "clickhouse",
        "prometheus",
        "alertmanager",
        "grafana",
        "worker",
        "sink",
        "collector",
        "actions",
    } <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")


def test_every_mounted_file_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"
        if "build" in service:
            assert (REPO / service["build"] / "Dockerfile").exists()


def test_depends_on_names_real_services_and_waits_for_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on", {})
        for target in depends:
            assert target in services, f"{name} depends on unknown service {target}"
        if isinstance(depends, dict):
            for target, rule in depends.items():
                if rule["condition"] == "service_healthy":
                    assert "healthcheck" in services[target], f"{target} has no healthcheck"


def test_journeywatch_services_use_known_settings_and_commands(compose: dict[str, Any]) -> None:
    known = {f"JW_{name.upper()}" for name in Settings.model_fields}
    commands = set(cli.commands)
    jw_services = {
        n: s
        for n, s in compose["services"].items()
        if s.get("image", "").startswith("journeywatch")
    }
    assert {"worker", "sink", "collector", "actions", "migrate", "topics"} <= set(jw_services)
    for name, service in jw_services.items():
        assert service["command"][0] in commands, f"{name}: unknown command {service['command']}"
        command = cli.commands[service["command"][0]]
        if isinstance(command, click.Group) and not command.invoke_without_command:
            # a group that needs a subcommand: actions run
            assert service["command"][1] in command.commands, f"{name}: {service['command']}"
        for variable in service.get("environment", {}):
            if variable.startswith("JW_") and variable != "JW_HEALTH_PORT":
                assert variable in known, (
                    f"{name} sets {variable}, which journeywatch does not read"
                )
        assert service["environment"]["JW_BROKER_URL"] == "kafka:9092"
    # only the roles that use ClickHouse get a DSN, each with its own user
    dsn = {n: s["environment"].get("JW_CLICKHOUSE_DSN") for n, s in jw_services.items()}
    assert dsn["migrate"].startswith("http://journeywatch:${CLICKHOUSE_PASSWORD")
    assert dsn["sink"].startswith("http://jw_sink:${CLICKHOUSE_SINK_PASSWORD")
    assert {n for n, d in dsn.items() if d} == {"migrate", "sink"}


def test_secrets_are_never_written_into_the_compose_file() -> None:
    text = COMPOSE.read_text()
    for key in (
        "JW_PII_HASH_KEY",
        "CLICKHOUSE_PASSWORD",
        "CLICKHOUSE_SINK_PASSWORD",
        "CLICKHOUSE_READER_PASSWORD",
        "GF_SECURITY_ADMIN_PASSWORD",
        "JW_COLLECTOR_API_KEYS",
        "JW_KAFKA_SASL_PASSWORD",
        "JW_ACTION_SECRETS",
    ):
        matches = list(re.finditer(rf"^\s*{key}:\s*(\S+)", text, re.M))
        assert matches, key
        for match in matches:
            assert match.group(1).startswith("${"), f"{key} must come from the environment"
    # every password-like value anywhere is a variable, a secret file or a setting's name
    for match in re.finditer(r"(?i)^[ \t]*[\w.-]*(password|secret)[\w.-]*:[ \t]*(\S+)", text, re.M):
        value = match.group(2)
        assert value.startswith(("${", "/run/secrets/", "[")), match.group(0)


def test_no_secret_file_is_committed() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "deploy/compose-secrets", ".env", "*.env"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tracked == ["deploy/compose-secrets/.gitignore"]
    ignored = subprocess.run(
        [
            "git",
            "check-ignore",
            "deploy/compose-secrets/compose.env",
            "deploy/compose-secrets/kafka_jaas.conf",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert len(ignored) == 2


def kafka_clients(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The journeywatch services that talk to Kafka (every one but the ClickHouse migration)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("image", "").startswith("journeywatch") and name != "migrate"
    }


def test_every_kafka_client_authenticates_with_scram_as_its_own_role(
    compose: dict[str, Any],
) -> None:
    users = {}
    for name, service in kafka_clients(compose).items():
        env = service["environment"]
        assert env["JW_KAFKA_SECURITY_PROTOCOL"] in ("SASL_PLAINTEXT", "SASL_SSL"), name
        assert env["JW_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512", name
        user = env["JW_KAFKA_SASL_USERNAME"]
        assert env["JW_KAFKA_SASL_PASSWORD"] == (
            f"${{KAFKA_{user.upper()}_PASSWORD:?set KAFKA_{user.upper()}_PASSWORD}}"
        ), name
        users[name] = user
    assert users == {
        "topics": "admin",
        "worker": "worker",
        "sink": "sink",
        "collector": "collector",
        "actions": "actions",
        "simulator": "collector",
    }
    # the settings reach a real client as SASL options
    from streams.topics import kafka_client_options

    worker = compose["services"]["worker"]["environment"]
    options = kafka_client_options(
        Settings(
            broker_url=worker["JW_BROKER_URL"],
            kafka_security_protocol=worker["JW_KAFKA_SECURITY_PROTOCOL"],
            kafka_sasl_mechanism=worker["JW_KAFKA_SASL_MECHANISM"],
            kafka_sasl_username=worker["JW_KAFKA_SASL_USERNAME"],
            kafka_sasl_password="from-the-env-file",
        )
    )
    assert options["sasl_plain_username"] == "worker"


def test_kafka_takes_sasl_only_and_denies_what_no_acl_allows(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    env = kafka["environment"]
    protocols = dict(
        pair.split(":") for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(protocols.values()) == {"SASL_PLAINTEXT"}, "no unauthenticated listener"
    for listener in env["KAFKA_LISTENERS"].split(","):
        assert protocols[listener.split("://")[0]] == "SASL_PLAINTEXT"
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert "User:ANONYMOUS" not in env["KAFKA_SUPER_USERS"]
    assert "java.security.auth.login.config=/run/secrets/kafka_jaas" in env["KAFKA_OPTS"]
    assert {"kafka_jaas", "kafka_scram_users"} <= set(kafka["secrets"])
    assert "kafka-start.sh" in " ".join(kafka["command"])
    start = (REPO / "deploy" / "kafka-broker" / "start.sh").read_text()
    assert "kafka-storage.sh format --ignore-formatted" in start and "--add-scram" in start
    # every variable the format step reads is set
    for variable in re.findall(r"\$\{(KAFKA_\w+|CLUSTER_ID)\}", start):
        assert variable in env, variable
    for role in ("worker", "sink", "collector", "actions"):
        assert compose["services"][role]["depends_on"]["kafka-acls"] == {
            "condition": "service_completed_successfully"
        }


ACLS = REPO / "deploy" / "kafka-broker" / "acls.sh"
# the script's variables with JW_TOPIC_PREFIX unset (the Faust app ids of streams/app.py)
ACL_VARIABLES = {
    "${prefix}": "",
    "${app}": "journeywatch",
    "${actions_app}": "journeywatch-actions",
}
# Kafka: Read, Write, Delete and Alter imply Describe
IMPLIES_DESCRIBE = ("Read", "Write", "Delete", "Alter")


def _acls() -> dict[tuple[str, str], set[str]]:
    """(user, operation) -> the topics deploy/kafka-broker/acls.sh allows (prefix unset), as
    written in the script: ``group:NAME`` for a consumer group, ``NAME*`` for a prefix."""
    text = ACLS.read_text().replace("\\\n", " ")
    every_role = re.search(r"^for user in ([\w ]+); do", text, re.M)
    assert every_role, "the loop that lets every role Describe the topics"
    found: dict[tuple[str, str], set[str]] = {}
    for line in text.splitlines():
        if not line.lstrip().startswith("acl "):
            continue
        users = re.findall(r"User:(\$\{user\}|\w+)", line)
        operations = re.findall(r"--operation (\w+)", line)
        prefixed = "--resource-pattern-type prefixed" in line
        topics = {
            name + ("*" if prefixed else "")
            for name in re.findall(r"--topic \"?([\w.${}-]+)", line)
        }
        listed = re.search(r"\$\(topics ([^)]*)\)", line)
        if listed:
            names = listed.group(1).split()
            if names == ['"${all[@]}"']:
                names = re.search(r"all=\(([^)]*)\)", text).group(1).split()  # type: ignore[union-attr]
            topics |= set(names)
        if re.search(r"--group", line):
            topics |= {"group:" + g for g in re.findall(r'--group "?([\w.${}-]+)', line)}
        for user in every_role.group(1).split() if users == ["${user}"] else users:
            for operation in operations:
                found.setdefault((user, operation), set()).update(topics)
    return found


def _resolved(name: str) -> str:
    for variable, value in ACL_VARIABLES.items():
        name = name.replace(variable, value)
    assert "$" not in name, f"acls.sh: unknown variable in {name}"
    return name


def may(acls: dict[tuple[str, str], set[str]], user: str, operation: str, resource: str) -> bool:
    """Whether the broker lets ``user`` do ``operation`` on the topic (or ``group:NAME``)
    ``resource``, as Kafka's StandardAuthorizer decides with these ALLOW ACLs only: a literal
    name or a prefix matches; Read, Write, Delete and Alter imply Describe."""
    operations = (operation, *IMPLIES_DESCRIBE) if operation == "Describe" else (operation,)
    for op in operations:
        for granted in map(_resolved, acls.get((user, op), set())):
            if granted == resource or (granted.endswith("*") and resource.startswith(granted[:-1])):
                return True
    return False


def _known_topics() -> set[str]:
    """Every topic journeywatch creates (``journeywatch topics``), prefix unset."""
    from streams.actions import action_topics
    from streams.topics import all_topics

    return set(all_topics(Settings())) | set(action_topics())


KAFKA_ROLES = ("collector", "worker", "sink", "actions")


def test_each_kafka_role_may_touch_its_own_topics_only() -> None:
    from streams import actions, topics

    acls = _acls()
    every = set(topics.all_topics(Settings()))
    journey_changelog = topics.changelog_topic("${app}", topics.JOURNEY_STATE_TABLE)
    actions_changelog = topics.changelog_topic("${actions_app}", actions.STATE_TABLE)
    for user in ("collector", "worker", "sink"):
        assert acls[(user, "Describe")] >= every, user
    assert acls[("collector", "Write")] == {topics.RAW}
    assert ("collector", "Read") not in acls
    assert acls[("worker", "Read")] == {
        topics.RAW,
        topics.BY_PERSON,
        topics.HANDOFF,
        journey_changelog,
        "group:${app}",
    }
    assert acls[("worker", "Write")] == {
        topics.BY_PERSON,
        topics.DLQ,
        topics.HANDOFF,
        topics.JOURNEY_EVENTS,
        topics.EXPERIENCE_MOMENTS,
        topics.JOURNEYS_DLQ,
        journey_changelog,
    }
    assert acls[("sink", "Read")] == {
        topics.BY_PERSON,
        topics.DLQ,
        topics.JOURNEY_EVENTS,
        topics.EXPERIENCE_MOMENTS,
        topics.JOURNEYS_DLQ,
        actions.ACTIONS_DLQ,  # into action_failures
        "group:${app}-sink",
    }
    assert ("sink", "Write") not in acls
    # the actions agent: the journey outputs in, its own topics and changelog, nothing else
    assert acls[("actions", "Read")] == {
        topics.JOURNEY_EVENTS,
        topics.EXPERIENCE_MOMENTS,
        actions.ACTION_TRIGGERS,
        actions_changelog,
        "group:${actions_app}",
    }
    assert acls[("actions", "Write")] == {
        actions.ACTION_TRIGGERS,
        actions.ACTIONS_DLQ,
        actions_changelog,
    }
    assert {op for user, op in acls if user == "actions"} == {"Describe", "Read", "Write"}
    script = ACLS.read_text()
    assert 'app="${prefix}journeywatch"' in script  # the Faust app ids of streams/app.py
    assert 'actions_app="${prefix}journeywatch-actions"' in script
    assert topics.changelog_topic("journeywatch", topics.JOURNEY_STATE_TABLE) in script.replace(
        "${app}", "journeywatch"
    )
    assert subprocess.run(["bash", "-n", str(ACLS)]).returncode == 0


def test_the_broker_would_let_each_role_write_only_what_it_must() -> None:
    """The ACLs evaluated as the broker does (literal names and prefixes): who may write, and
    who may read, each topic journeywatch creates. The actions agent writes its own topics
    only (never the journey topics), and no other role reads or writes its state."""
    from streams import actions, topics

    acls = _acls()
    known = _known_topics()
    journey_changelog = topics.changelog_topic("journeywatch", topics.JOURNEY_STATE_TABLE)
    actions_changelog = topics.changelog_topic(actions.APP_ID, actions.STATE_TABLE)
    writes = {user: {t for t in known if may(acls, user, "Write", t)} for user in KAFKA_ROLES}
    reads = {user: {t for t in known if may(acls, user, "Read", t)} for user in KAFKA_ROLES}
    assert writes == {
        "collector": {topics.RAW},
        "worker": {
            topics.BY_PERSON,
            topics.DLQ,
            topics.HANDOFF,
            topics.JOURNEY_EVENTS,
            topics.EXPERIENCE_MOMENTS,
            topics.JOURNEYS_DLQ,
            journey_changelog,
        },
        "sink": set(),
        "actions": {actions.ACTION_TRIGGERS, actions.ACTIONS_DLQ, actions_changelog},
    }
    assert reads["actions"] == {
        topics.JOURNEY_EVENTS,
        topics.EXPERIENCE_MOMENTS,
        actions.ACTION_TRIGGERS,
        actions_changelog,
    }
    for user in ("collector", "worker", "sink"):
        assert not {actions.ACTION_TRIGGERS, actions_changelog} & (reads[user] | writes[user])
    # every role may Describe each topic it reads or writes (it checks them at start), and
    # may read as its own consumer group only
    for user in KAFKA_ROLES:
        for topic in reads[user] | writes[user]:
            assert may(acls, user, "Describe", topic), (user, topic)
    from streams.app import APP_IDS

    groups = {
        role: {g for g in APP_IDS.values() if may(acls, role, "Read", "group:" + g)}
        for role in KAFKA_ROLES
    }
    assert groups == {
        "collector": set(),
        "worker": {APP_IDS["worker"]},
        "sink": {APP_IDS["sink"]},
        "actions": {APP_IDS["actions"]},
    }
    # the actions agent may Describe what it checks at start (streams/roles.py run_actions)
    for topic in actions.action_topics():
        assert may(acls, "actions", "Describe", topic), topic
    assert not may(acls, "actions", "Describe", topics.RAW)


def test_every_role_has_a_kafka_user_acls_and_a_service(compose: dict[str, Any]) -> None:
    """Each process role of streams/app.py (worker, sink, actions) and the collector runs in
    the stack as its own Kafka user, which deploy/compose_secrets.py creates and acls.sh
    grants; the role's health check and metrics port is the one it serves."""
    import importlib.util

    from streams.app import APP_IDS

    spec = importlib.util.spec_from_file_location(
        "compose_secrets", REPO / "deploy" / "compose_secrets.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    acls = _acls()
    assert set(APP_IDS) | {"collector"} == set(KAFKA_ROLES)
    assert set(module.KAFKA_USERS) == {"admin", *KAFKA_ROLES}
    services = compose["services"]
    ports = {
        "worker": "JW_WORKER_WEB_PORT",
        "sink": "JW_STATUS_PORT",
        "collector": "JW_COLLECTOR_PORT",
        "actions": "JW_ACTIONS_WEB_PORT",
    }
    for role in KAFKA_ROLES:
        assert any(user == role for user, _ in acls), f"{role} has no ACL"
        service = services[role]
        env = service["environment"]
        assert env["JW_KAFKA_SASL_USERNAME"] == role
        assert env["JW_HEALTH_PORT"] == env[ports[role]], role  # the Dockerfile's HEALTHCHECK
        assert service.get("restart", "unless-stopped") == "unless-stopped", role
        assert service["depends_on"]["topics"] == {"condition": "service_completed_successfully"}
    assert services["actions"]["command"] == ["actions", "run"]


def test_prometheus_scrapes_every_role_where_it_serves_metrics(compose: dict[str, Any]) -> None:
    """Every long-running journeywatch service is a scrape target on its port (the actions
    agent too: without its jw_action_* series ActionDeliveriesFailing could never fire)."""
    prometheus = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    targets: dict[str, set[str]] = {}
    for job in prometheus["scrape_configs"]:
        found = targets.setdefault(job["job_name"], set())
        for config in job.get("static_configs", []):
            found |= set(config["targets"])
        for config in job.get("dns_sd_configs", []):
            found |= {f"{name}:{config['port']}" for name in config["names"]}
    rules = " ".join((REPO / "deploy/prometheus/rules" / f).read_text() for f in ("actions.yml",))
    assert "jw_action_deliveries_total" in rules
    for role in KAFKA_ROLES:
        port = compose["services"][role]["environment"]["JW_HEALTH_PORT"]
        assert targets.get(f"journeywatch-{role}") == {f"{role}:{port}"}, role
        # WorkerDown watches up{job=~"journeywatch-.*"}: every role's job is named so


def test_clickhouse_has_a_writer_and_a_read_only_user(compose: dict[str, Any]) -> None:
    import xml.etree.ElementTree as ET

    users_xml = REPO / "deploy" / "clickhouse" / "users.d" / "journeywatch.xml"
    root = ET.parse(users_xml).getroot()  # noqa: S314 - the repository's own file
    clickhouse = compose["services"]["clickhouse"]
    assert any(v.startswith("./deploy/clickhouse/users.d/") for v in clickhouse["volumes"])
    users = {user.tag: user for user in root.find("users")}  # type: ignore[union-attr]
    assert set(users) == {"jw_sink", "jw_reader"}
    for user in users.values():
        password = user.find("password")
        assert password is not None and not (password.text or "").strip(), "no literal password"
        assert password.get("from_env") in clickhouse["environment"]
    reader = users["jw_reader"]
    profile = root.find(f"profiles/{reader.findtext('profile')}")
    assert profile is not None and profile.findtext("readonly") in ("1", "2")
    assert [q.text for q in reader.iter("query")] == ["GRANT SELECT ON journeywatch.*"]
    sink_grants = " ".join(q.text or "" for q in users["jw_sink"].iter("query"))
    assert "INSERT" in sink_grants and "DROP" not in sink_grants and "journeywatch.*" in sink_grants
    datasources = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/datasources/datasources.yml").read_text()
    )["datasources"]
    clickhouse_source = next(d for d in datasources if d["uid"] == "clickhouse")
    assert clickhouse_source["jsonData"]["username"] == "jw_reader"


def test_prometheus_and_alertmanager_require_basic_auth(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("prometheus", "alertmanager"):
        command = services[name]["command"]
        assert "--web.config.file=/run/secrets/monitoring_web_config" in command, name
        assert "monitoring_web_config" in services[name]["secrets"], name
    sink = services["sink"]
    assert (
        sink["environment"]["JW_ALERTMANAGER_PASSWORD_FILE"] == "/run/secrets/monitoring_password"
    )
    assert "monitoring_password" in sink["secrets"]
    prometheus = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    for alertmanager in prometheus["alerting"]["alertmanagers"]:
        assert alertmanager["basic_auth"]["password_file"] == "/run/secrets/monitoring_password"
    datasources = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/datasources/datasources.yml").read_text()
    )["datasources"]
    source = next(d for d in datasources if d["type"] == "prometheus")
    assert source["basicAuth"] is True
    assert source["secureJsonData"]["basicAuthPassword"].startswith("$__file{/run/secrets/")
    assert "monitoring_password" in services["grafana"]["secrets"]


def test_the_generated_secrets_are_what_the_stack_mounts(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """deploy/compose_secrets.py makes every secret file and variable the stack reads; the
    web config passes promtool, and Prometheus's config with the password file too."""
    import importlib.util

    import bcrypt

    spec = importlib.util.spec_from_file_location(
        "compose_secrets", REPO / "deploy" / "compose_secrets.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    values = module.generate(tmp_path)
    assert module.generate(tmp_path) == values, "a second run keeps the secrets"
    for name, secret in compose["secrets"].items():
        path = tmp_path / Path(secret["file"]).name
        assert secret["file"].startswith("./deploy/compose-secrets/"), name
        assert path.exists(), name
        assert path.stat().st_mode & 0o077 == 0, f"{name} is readable by others"
    variables = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    assert variables - set(values) == {"JW_COLLECTOR_API_KEYS"}  # the operator's own keys
    # the actions' webhook secrets: an empty object to fill in, valid as the setting
    assert values["JW_ACTION_SECRETS"] == "{}"
    assert "JW_ACTION_SECRETS={}" in (tmp_path / "compose.env").read_text().splitlines()
    assert Settings(action_secrets=json.loads(values["JW_ACTION_SECRETS"])).action_secrets == {}
    web = tmp_path / "monitoring-web.yml"
    checked = subprocess.run(
        ["promtool", "check", "web-config", str(web)], capture_output=True, text=True
    )
    assert checked.returncode == 0 and "SUCCESS" in checked.stdout + checked.stderr
    hashed = yaml.safe_load(web.read_text())["basic_auth_users"]["journeywatch"]
    password = (tmp_path / "monitoring-password").read_text()
    assert bcrypt.checkpw(password.encode(), hashed.encode())
    config = (REPO / "deploy/prometheus/prometheus.yml").read_text()
    local = tmp_path / "prometheus.yml"
    local.write_text(
        config.replace("/run/secrets/monitoring_password", str(tmp_path / "monitoring-password"))
    )
    checked = subprocess.run(
        ["promtool", "check", "config", str(local)], capture_output=True, text=True
    )
    assert "SUCCESS" in checked.stdout + checked.stderr
    scram = (tmp_path / "kafka-scram-users").read_text().split()
    assert {line.split("name=")[1].split(",")[0] for line in scram} == {
        "admin",
        "collector",
        "worker",
        "sink",
        "actions",
    }
    jaas = (tmp_path / "kafka_jaas.conf").read_text()
    assert values["KAFKA_ADMIN_PASSWORD"] in jaas and "controller.KafkaServer" in jaas


def test_the_dockerfile_runs_as_non_root_with_a_health_check() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^USER\s+(?!root|0\b)\S+", dockerfile, re.M)
    assert "HEALTHCHECK" in dockerfile
    stages = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)
    assert len(stages) >= 2 and all("slim" in stage for stage in stages)
    final = dockerfile[dockerfile.rindex("\nFROM ") :]
    # No build tools in the final image: it only copies the built virtualenv.
    assert not re.search(r"apt-get install|pip install|gcc|build-essential", final)
    assert "COPY --from=build /opt/journeywatch /opt/journeywatch" in final


@pytest.mark.parametrize(
    "path", sorted((REPO / "deploy").rglob("*.yml")), ids=lambda p: str(p.relative_to(REPO))
)
def test_deploy_yaml_files_parse(path: Path) -> None:
    assert yaml.safe_load(path.read_text())


@pytest.mark.parametrize(
    "path", sorted((REPO / "deploy").rglob("*.json")), ids=lambda p: str(p.relative_to(REPO))
)
def test_deploy_json_files_parse(path: Path) -> None:
    assert json.loads(path.read_text())


def test_no_deploy_directory_shadows_a_python_package() -> None:
    """mypy puts deploy/ on its search path (it checks deploy/*.py): a directory there named
    like an installed package (``deploy/kafka``) would hide that package from it."""
    import importlib.util

    for path in (REPO / "deploy").iterdir():
        if path.is_dir() and path.name.isidentifier():
            assert importlib.util.find_spec(path.name) is None, f"deploy/{path.name} shadows it"


def test_the_sink_signs_people_in_with_tokens_from_secrets(compose: dict[str, Any]) -> None:
    """Sign-in is on in the stack: the sink reads its admin and read-only tokens from Docker
    secrets (deploy/compose_secrets.py makes them) and no setting turns it off."""
    sink = compose["services"]["sink"]
    env = sink["environment"]
    assert env["JW_WEB_ADMIN_TOKEN_FILE"] == "/run/secrets/web_admin_token"
    assert env["JW_WEB_READ_TOKEN_FILE"] == "/run/secrets/web_read_token"
    assert {"web_admin_token", "web_read_token"} <= set(sink["secrets"])
    assert "JW_WEB_AUTH" not in COMPOSE.read_text()
