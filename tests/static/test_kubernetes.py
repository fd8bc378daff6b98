"""Every kustomize overlay renders, and every object passes the Kubernetes schemas (offline)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.helpers import REPO

K8S = REPO / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
KUBERNETES_VERSION = "1.30.0"
CRDS = {"ServiceMonitor", "PrometheusRule"}


def render(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (o["metadata"]["name"], o["spec"]["template"]["spec"])
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet", "Job")
    ]


def test_there_are_small_and_production_overlays() -> None:
    assert {"small", "production"} <= set(OVERLAYS)


def test_every_object_is_valid_for_kubernetes(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        if obj["kind"] in CRDS:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1" and obj["spec"]
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_every_container_runs_non_root_read_only_with_limits(objects: list[dict[str, Any]]) -> None:
    specs = pod_specs(objects)
    assert {name for name, _ in specs} >= {
        "journeywatch-worker",
        "journeywatch-sink",
        "journeywatch-collector",
        "journeywatch-actions",
        "journeywatch-migrate",
        "journeywatch-topics",
    }
    for name, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert {"requests", "limits"} <= set(container["resources"]), name
            refs = {ref.get("secretRef", {}).get("name") for ref in container.get("envFrom", [])}
            assert "journeywatch-secrets" in refs, name


def test_long_running_pods_have_readiness_and_liveness_probes(
    objects: list[dict[str, Any]],
) -> None:
    for name, spec in pod_specs(objects):
        if name.endswith(("migrate", "topics")):
            continue
        container = spec["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez", name


def test_workers_scale_at_most_to_the_partition_count(objects: list[dict[str, Any]]) -> None:
    config = next(
        o
        for o in by_kind(objects, "ConfigMap")
        if o["metadata"]["name"].startswith("journeywatch-config")
    )
    partitions = int(config["data"]["JW_PARTITIONS"])
    hpa = next(
        o
        for o in by_kind(objects, "HorizontalPodAutoscaler")
        if o["metadata"]["name"] == "journeywatch-worker"
    )
    assert hpa["spec"]["maxReplicas"] <= partitions
    assert by_kind(objects, "PodDisruptionBudget") and by_kind(objects, "NetworkPolicy")


def test_no_secret_values_are_committed(objects: list[dict[str, Any]]) -> None:
    assert by_kind(objects, "Secret") == []
    for config in by_kind(objects, "ConfigMap"):
        for key in config.get("data", {}):
            assert key not in (
                "JW_PII_HASH_KEY",
                "JW_COLLECTOR_API_KEYS",
                "JW_CLICKHOUSE_DSN",
                "JW_ACTION_SECRETS",
            )
            assert "PASSWORD" not in key, key


def test_prometheus_rule_and_journeys_are_generated_from_their_sources() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_docs", REPO / "docs" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stale = "deploy/k8s is stale: run `make docs`"
    assert (K8S / "base" / "prometheusrule.yaml").read_text() == module.prometheus_rule(), stale
    assert (K8S / "base" / "journeys.yaml").read_text() == (
        REPO / "pipeline" / "defaults" / "journeys.yaml"
    ).read_text(), stale


def test_the_worker_mounts_the_journey_definitions(objects: list[dict[str, Any]]) -> None:
    """The worker (journeys), the collector (the file's sources: mappings and webhooks:
    it stops at start-up when JW_JOURNEYS_FILE is not there) and the actions agent (the
    file's actions:)."""
    worker = next(o for o in by_kind(objects, "StatefulSet"))
    collector, actions = (
        next(o for o in by_kind(objects, "Deployment") if o["metadata"]["name"].endswith(name))
        for name in ("collector", "actions")
    )
    config = next(
        o
        for o in by_kind(objects, "ConfigMap")
        if o["metadata"]["name"].startswith("journeywatch-config")
    )
    for workload in (worker, collector, actions):
        container = workload["spec"]["template"]["spec"]["containers"][0]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert Path(config["data"]["JW_JOURNEYS_FILE"]).parent.as_posix() in mounts, workload


def test_every_kafka_client_authenticates_as_its_own_role(objects: list[dict[str, Any]]) -> None:
    config = next(
        o
        for o in by_kind(objects, "ConfigMap")
        if o["metadata"]["name"].startswith("journeywatch-config")
    )
    assert config["data"]["JW_KAFKA_SECURITY_PROTOCOL"].startswith("SASL_")
    assert config["data"]["JW_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    users = {}
    for name, spec in pod_specs(objects):
        container = spec["containers"][0]
        env = {e["name"]: e for e in container.get("env", [])}
        if name.endswith("migrate"):  # ClickHouse only
            assert "JW_KAFKA_SASL_USERNAME" not in env
            continue
        user = env["JW_KAFKA_SASL_USERNAME"]["value"]
        password = env["JW_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert password == {"name": "journeywatch-kafka", "key": f"{user}-password"}, name
        users[name] = user
    assert users == {
        "journeywatch-topics": "admin",
        "journeywatch-worker": "worker",
        "journeywatch-sink": "sink",
        "journeywatch-collector": "collector",
        "journeywatch-actions": "actions",
    }


def test_the_sink_reads_alertmanager_with_a_password_from_a_secret(
    objects: list[dict[str, Any]],
) -> None:
    sink = next(spec for name, spec in pod_specs(objects) if name == "journeywatch-sink")
    env = {e["name"]: e for e in sink["containers"][0]["env"]}
    assert "JW_ALERTMANAGER_URL" in env
    assert env["JW_ALERTMANAGER_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == (
        "journeywatch-monitoring"
    )


def test_the_sink_signs_people_in_with_tokens_from_a_secret(
    objects: list[dict[str, Any]],
) -> None:
    """Sign-in is on: both API tokens come from the journeywatch-web secret (never a value
    here), and no setting turns it off."""
    sink = next(spec for name, spec in pod_specs(objects) if name == "journeywatch-sink")
    env = {e["name"]: e for e in sink["containers"][0]["env"]}
    for name, key in (("JW_WEB_ADMIN_TOKEN", "admin-token"), ("JW_WEB_READ_TOKEN", "read-token")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "journeywatch-web", "key": key}
    rendered = yaml.safe_dump_all(objects)
    assert "JW_WEB_AUTH" not in rendered and "JW_WEB_COOKIE_SECURE" not in rendered


def test_the_actions_agent_reads_its_webhook_secrets_from_a_secret(
    objects: list[dict[str, Any]],
) -> None:
    """The receivers' tokens come from the journeywatch-actions secret (optional: a file
    whose rules name no secret needs none), never a value in the manifests."""
    actions = next(spec for name, spec in pod_specs(objects) if name == "journeywatch-actions")
    container = actions["containers"][0]
    assert container["args"] == ["actions", "run"]
    env = {e["name"]: e for e in container["env"]}
    assert env["JW_ACTION_SECRETS"]["valueFrom"]["secretKeyRef"] == {
        "name": "journeywatch-actions",
        "key": "secrets",
        "optional": True,
    }
    assert "value" not in env["JW_ACTION_SECRETS"]


def test_compose_and_kubernetes_run_the_same_roles_alike(objects: list[dict[str, Any]]) -> None:
    """Each long-running role of docker-compose.yml is a workload here with the same command,
    Kafka user and port; every role's metrics are scraped (the ServiceMonitor selects its
    Service) and reachable (the NetworkPolicy opens its port)."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    roles = ("worker", "sink", "collector", "actions")
    specs = dict(pod_specs(objects))
    for role in roles:
        service = compose[role]
        container = specs[f"journeywatch-{role}"]["containers"][0]
        assert container["args"] == service["command"], role
        env = {e["name"]: e for e in container.get("env", [])}
        assert (
            env["JW_KAFKA_SASL_USERNAME"]["value"]
            == service["environment"]["JW_KAFKA_SASL_USERNAME"]
        ), role
        [port] = [p["containerPort"] for p in container["ports"]]
        assert str(port) == service["environment"]["JW_HEALTH_PORT"], role
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    [selector] = monitor["spec"]["selector"]["matchExpressions"]
    services = {
        o["metadata"]["labels"]["app.kubernetes.io/component"]: o
        for o in by_kind(objects, "Service")
    }
    for role in roles:
        assert role in selector["values"] and role in services, role
        assert [p["name"] for p in services[role]["spec"]["ports"]] == ["http"], role
    policy = next(
        o
        for o in by_kind(objects, "NetworkPolicy")
        if o["metadata"]["name"] == "journeywatch-metrics-and-status"
    )
    opened = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    for role in roles:
        container = specs[f"journeywatch-{role}"]["containers"][0]
        assert {p["containerPort"] for p in container["ports"]} <= opened, role
