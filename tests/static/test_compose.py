"""The docker-compose stack cannot run here (no Docker engine): check it statically."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

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
    assert {"worker", "sink", "migrate", "topics"} <= set(jw_services)
    for name, service in jw_services.items():
        assert service["command"][0] in commands, f"{name}: unknown command {service['command']}"
        for variable in service.get("environment", {}):
            if variable.startswith("JW_") and variable != "JW_HEALTH_PORT":
                assert variable in known, (
                    f"{name} sets {variable}, which journeywatch does not read"
                )
        assert service["environment"]["JW_BROKER_URL"] == "kafka:9092"
        assert service["environment"]["JW_CLICKHOUSE_DSN"].startswith("http://")


def test_secrets_are_never_written_into_the_compose_file() -> None:
    text = COMPOSE.read_text()
    for key in (
        "JW_PII_HASH_KEY",
        "CLICKHOUSE_PASSWORD",
        "GF_SECURITY_ADMIN_PASSWORD",
        "JW_COLLECTOR_API_KEYS",
    ):
        for match in re.finditer(rf"^\s*{key}:\s*(\S+)", text, re.M):
            assert match.group(1).startswith("${"), f"{key} must come from the environment"


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
