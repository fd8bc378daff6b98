"""Every Kafka client gets the same connection security from settings (SASL/SCRAM per role)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from pipeline.settings import Settings
from streams.app import faust_credentials
from streams.topics import TopicSetupError, kafka_client_options

SCRAM = {
    "broker_url": "kafka:9092",
    "kafka_security_protocol": "SASL_PLAINTEXT",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "jw-worker",
    "kafka_sasl_password": "not-a-real-password",
}


def test_plaintext_adds_nothing() -> None:
    settings = Settings(broker_url="kafka:9092")
    assert kafka_client_options(settings) == {}
    assert faust_credentials(settings) is None


def test_scram_options_for_kafka_python_aiokafka_and_faust() -> None:
    settings = Settings(**SCRAM)  # type: ignore[arg-type]
    options = kafka_client_options(settings)
    assert options == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "jw-worker",
        "sasl_plain_password": "not-a-real-password",
    }

    # aiokafka validates them when the client is made (no connection yet)
    async def make() -> None:
        await AIOKafkaProducer(bootstrap_servers="kafka:9092", **options).client.close()

    asyncio.run(make())
    # Faust hands its aiokafka clients the same
    auth = credentials_to_aiokafka_auth(faust_credentials(settings))
    assert {key: auth[key] for key in options} == options
    assert auth["ssl_context"] is None


def test_sasl_ssl_verifies_the_broker() -> None:
    settings = Settings(**(SCRAM | {"kafka_security_protocol": "SASL_SSL"}))  # type: ignore[arg-type]
    options = kafka_client_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["ssl_context"].check_hostname
    auth = credentials_to_aiokafka_auth(faust_credentials(settings))
    assert auth["security_protocol"] == "SASL_SSL" and auth["ssl_context"] is not None


def test_sasl_without_a_user_is_refused_with_the_missing_settings() -> None:
    settings = Settings(broker_url="kafka:9092", kafka_security_protocol="SASL_PLAINTEXT")
    with pytest.raises(TopicSetupError, match=r"JW_KAFKA_SASL_MECHANISM.*USERNAME.*PASSWORD"):
        kafka_client_options(settings)


CLIENTS = {
    "KafkaProducer",
    "KafkaConsumer",
    "KafkaAdminClient",
    "AIOKafkaProducer",
    "AIOKafkaConsumer",
}


def test_every_kafka_client_of_the_product_gets_the_security_options() -> None:
    import ast
    from pathlib import Path

    from tests.helpers import REPO

    missing: dict[str, int] = {}
    for path in sorted((REPO / "streams").rglob("*.py")) + sorted((REPO / "sinks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name not in CLIENTS:
                continue
            secured = any(
                keyword.arg is None
                and isinstance(keyword.value, ast.Call)
                and getattr(keyword.value.func, "id", None)
                in ("kafka_client_options", "kafka_connection")
                for keyword in node.keywords
            )
            if not secured:
                relative = Path(path).relative_to(REPO).as_posix()
                missing[relative] = missing.get(relative, 0) + 1
    assert missing == {}
