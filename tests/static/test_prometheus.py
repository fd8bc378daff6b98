"""Prometheus rules and Alertmanager routing, checked and unit-tested with the real tools."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import REPO

PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
ALERTMANAGER = REPO / "deploy" / "alertmanager" / "alertmanager.yml"


def run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def alerts() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def test_rules_and_config_pass_promtool() -> None:
    assert "SUCCESS" in run("promtool", "check", "rules", *map(str, RULES))
    assert "SUCCESS" in run("promtool", "check", "config", str(PROMETHEUS / "prometheus.yml"))


def test_rule_unit_tests_pass() -> None:
    output = run("promtool", "test", "rules", *map(str, RULE_TESTS))
    assert output.count("SUCCESS") == len(RULE_TESTS)


def test_every_alert_has_a_case_that_fires_and_one_that_must_not() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check["exp_alerts"] else silent).add(check["alertname"])
    names = {alert["alert"] for alert in alerts()}
    assert names >= {
        "JourneyDropOffSpike",
        "NegativeMomentSpike",
        "MomentOfTruthFailing",
        "IngestionStalled",
        "ConsumerLagGrowing",
        "JourneyOutputsLate",
        "SinkFailing",
        "DeadLetterRateHigh",
        "WorkerDown",
        "NpsDrop",
        "CsatDrop",
    }
    assert names <= fires, f"no firing case for {names - fires}"
    assert names <= silent, f"no silent case for {names - silent}"


def test_every_metric_the_rules_read_is_one_journeywatch_exposes() -> None:
    """A metric renamed in sinks/metrics.py (or misspelt in a rule) leaves a rule reading
    nothing, and its alert silent for ever: promtool cannot see it, its tests feed the name."""
    from prometheus_client import REGISTRY

    import sinks.metrics  # noqa: F401 - registers every metric

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    exposed = {
        family.name + suffix
        for family in REGISTRY.collect()
        for suffix in suffixes.get(family.type, ("",))
    }
    read = {
        name
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        for name in re.findall(r"\bjw_[a-z0-9_]+", rule["expr"])
    }
    assert {"jw_nps_answers_total", "jw_csat_answers_total"} <= read
    assert read - exposed == set()


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_every_alert_says_what_how_bad_and_where_to_look(alert: dict[str, Any]) -> None:
    assert alert["labels"]["severity"] in ("page", "warning")
    annotations = alert["annotations"]
    assert {"summary", "runbook_url", "dashboard"} <= set(annotations)
    runbook = re.search(r"/docs/runbooks/([a-z-]+\.md)$", annotations["runbook_url"])
    assert runbook and (REPO / "docs" / "runbooks" / runbook.group(1)).exists()
    text = (REPO / "docs" / "runbooks" / runbook.group(1)).read_text()
    assert alert["alert"] in text and "## Check" in text and "## Fix" in text
    if re.search(r"\bjourney\b", alert["expr"]):
        assert (
            "$labels.journey" in annotations["summary"] or "$labels.kind" in annotations["summary"]
        )


def test_alertmanager_config_and_routes() -> None:
    assert "SUCCESS" in run("amtool", "check-config", str(ALERTMANAGER))

    def route(*labels: str) -> str:
        out = run("amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels)
        return out.strip().splitlines()[0]

    assert (
        route("alertname=JourneyDropOffSpike", "severity=page", "journey=online_purchase")
        == "oncall"
    )
    assert route("alertname=NegativeMomentSpike", "severity=warning") == "ops-chat"
    # experience KPIs: the operations team that can act on them, not the engineer on call
    assert route("alertname=NpsDrop", "severity=warning", "journey=support_case") == "ops-chat"
    assert route("alertname=CsatDrop", "severity=warning", "channel=call_center") == "ops-chat"
    assert route("alertname=Unknown") == "ops-chat"


def test_ingestion_stalled_inhibits_the_drop_offs_it_causes() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    rule = next(
        r for r in config["inhibit_rules"] if 'alertname="IngestionStalled"' in r["source_matchers"]
    )
    assert "JourneyDropOffSpike" in rule["target_matchers"][0] and rule["equal"] == ["channel"]
    assert config["route"]["group_by"][:2] == ["alertname", "journey"]


def test_the_kubernetes_rule_object_carries_the_same_rules() -> None:
    generated = yaml.safe_load(
        (REPO / "deploy" / "k8s" / "base" / "prometheusrule.yaml").read_text()
    )
    groups = [g for path in RULES for g in yaml.safe_load(path.read_text())["groups"]]
    assert generated["spec"]["groups"] == groups


def test_rule_files_are_where_compose_mounts_them() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    volumes = compose["services"]["prometheus"]["volumes"]
    assert any(v.startswith("./deploy/prometheus/rules:") for v in volumes)
    assert Path(PROMETHEUS / "prometheus.yml").exists()


def test_time_compressed_rules_change_durations_only(tmp_path: Path) -> None:
    """The alerting end-to-end test runs the rules 60 times faster; they must stay the rules."""
    from streams.monitoring import compress_duration, compress_rules

    shipped = [yaml.safe_load(path.read_text()) for path in RULES]
    for n, groups in enumerate(shipped):
        compressed = compress_rules(groups, 60)
        path = tmp_path / f"rules-{n}.yml"
        path.write_text(yaml.safe_dump(compressed))
        assert "SUCCESS" in run("promtool", "check", "rules", str(path))
        for group, fast in zip(groups["groups"], compressed["groups"], strict=True):
            assert len(fast["rules"]) == len(group["rules"])
            for rule, fast_rule in zip(group["rules"], fast["rules"], strict=True):
                durations = re.compile(r"\d+(ms|[smhdwy])\b")
                # the same expression once every duration is taken out, the same labels
                assert durations.sub("D", fast_rule["expr"]) == durations.sub("D", rule["expr"])
                names = re.compile(r"jw[:_][a-z0-9_:]+")  # 10m in names stays
                assert names.findall(fast_rule["expr"]) == names.findall(rule["expr"])
                assert fast_rule.get("record") == rule.get("record")
                assert fast_rule.get("labels") == rule.get("labels")
                assert fast_rule.get("annotations") == rule.get("annotations")
    journeys = yaml.safe_load((PROMETHEUS / "rules" / "journeywatch.yml").read_text())
    assert "[10s]" in str(compress_rules(journeys, 60))
    assert compress_duration("6h", 60) == "360s"
    assert compress_duration("10s", 60) == "167ms"
    assert compress_duration("1h30m", 60) == "90s"
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        compress_duration("soon", 60)


def test_the_local_monitoring_web_config_passes_promtool(tmp_path: Path) -> None:
    """What `journeywatch run` gives its Prometheus and Alertmanager (--web.config.file)."""
    import bcrypt

    from streams.monitoring import USERNAME, web_config

    path = tmp_path / "web.yml"
    config = web_config(USERNAME, "a-password")
    path.write_text(yaml.safe_dump(config))
    assert "SUCCESS" in run("promtool", "check", "web-config", str(path))
    assert bcrypt.checkpw(b"a-password", config["basic_auth_users"][USERNAME].encode())


def test_a_journeys_drop_off_page_inhibits_the_segment_warnings_of_that_stage() -> None:
    """SegmentDropOffSpike (docs/segments.md) goes to the chat; when the whole journey's stage
    pages, its segments' warnings say nothing more."""
    config = yaml.safe_load(ALERTMANAGER.read_text())
    rule = next(
        r
        for r in config["inhibit_rules"]
        if r["target_matchers"] == ['alertname="SegmentDropOffSpike"']
    )
    assert rule["source_matchers"] == ['alertname="JourneyDropOffSpike"']
    assert rule["equal"] == ["journey", "stage"]
    out = run(
        "amtool",
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER}",
        "alertname=SegmentDropOffSpike",
        "severity=warning",
        "segment=gold",
    )
    assert out.strip().splitlines()[0] == "ops-chat"
