"""Topics as journeywatch creates them: the journey state changelog compacted."""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest
from kafka import KafkaAdminClient

from pipeline.settings import Settings
from streams.broker import EmbeddedBroker
from streams.topics import (
    JOURNEY_STATE_TABLE,
    _check_compacted,
    all_topics,
    changelog_topic,
    ensure_topics,
    topic_configs,
)

pytestmark = pytest.mark.integration


def test_every_topic_is_created_and_the_state_changelog_is_compacted(
    broker: EmbeddedBroker,
) -> None:
    settings = Settings(broker_url=broker.url, partitions=3)
    changelog = changelog_topic(settings.topic("journeywatch"), JOURNEY_STATE_TABLE)
    assert topic_configs(settings) == {changelog: {"cleanup.policy": "compact"}}
    ids = ensure_topics(settings)  # the create request carries the config (the broker takes it)
    assert set(ids) == set(all_topics(settings)) and changelog in ids
    admin = KafkaAdminClient(bootstrap_servers=broker.url.removeprefix("kafka://"))
    try:
        assert changelog in admin.list_topics()
    finally:
        admin.close()
    assert ensure_topics(settings) == ids  # again: nothing created, nothing changed


def test_the_topics_command_creates_the_actions_agents_topics_too(
    broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``journeywatch topics`` (run as the admin user: the roles may not create topics under
    deploy/kafka-broker/acls.sh) creates the actions agent's topics and its state changelog
    with the others, so that agent and the sink only describe them at start."""
    from click.testing import CliRunner

    from streams.actions import action_topics
    from streams.cli import main

    for name in [n for n in os.environ if n.startswith("JW_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("JW_BROKER_URL", broker.url)
    monkeypatch.setenv("JW_PARTITIONS", "3")
    result = CliRunner().invoke(main, ["topics"])
    assert result.exit_code == 0, result.output
    listed = {line.split("\t")[0] for line in result.output.splitlines()}
    wanted = set(all_topics(Settings())) | set(action_topics())
    assert listed == wanted
    admin = KafkaAdminClient(bootstrap_servers=broker.url.removeprefix("kafka://"))
    try:
        assert wanted <= set(admin.list_topics())
    finally:
        admin.close()


class _Admin:
    """What Apache Kafka answers to DescribeConfigs / AlterConfigs (the embedded broker
    answers neither, so the check's decisions are tested on the answers' shape here)."""

    def __init__(self, policy: str, alter_fails: bool) -> None:
        self.policy, self.alter_fails = policy, alter_fails
        self.altered: list[Any] = []

    def describe_configs(self, resources: list[Any], config_filter: str) -> dict[str, Any]:
        assert config_filter == "all"
        return {"topic": {r.name: {"cleanup.policy": {"value": self.policy}} for r in resources}}

    def alter_configs(self, resources: list[Any]) -> None:
        if self.alter_fails:
            raise PermissionError("TopicAuthorizationFailed")
        self.altered += [(r.name, r.configs) for r in resources]


@pytest.mark.parametrize("policy", ["delete", "compact", "compact,delete"])
def test_a_changelog_left_uncompacted_is_fixed_or_reported_with_the_command(
    policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    admin = _Admin(policy, alter_fails=False)
    _check_compacted(admin, ["jw-state-changelog"])
    compacted = "compact" in policy
    assert admin.altered == (
        [] if compacted else [("jw-state-changelog", {"cleanup.policy": "compact"})]
    )
    denied = _Admin(policy, alter_fails=True)
    with caplog.at_level(logging.WARNING, logger="streams.topics"):
        _check_compacted(denied, ["jw-state-changelog"])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    if compacted:
        assert errors == []
    else:
        assert len(errors) == 1 and "--entity-name jw-state-changelog" in errors[0]
        assert "cleanup.policy=compact" in errors[0]
