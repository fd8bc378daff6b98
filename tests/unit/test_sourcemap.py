"""The ``sources:`` mapping (pipeline/sourcemap.py) and its place in the journeys file: rules
applied by the Segment and Snowplow mappings, survey webhooks, signatures, validation errors
with line numbers, and properties over any file ``journeys check`` accepts."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pipeline.collect import ItemError, prepare_event
from pipeline.contract import TouchpointEvent
from pipeline.definitions import DefinitionError, JourneyCatalog, load_catalog, parse_catalog
from pipeline.pii import hash_email
from pipeline.segment import SegmentRequest, map_message
from pipeline.snowplow import map_event
from pipeline.sourcemap import (
    Signature,
    SourceMapping,
    UnmappedNames,
    lookup,
    signature_valid,
    survey_event,
)
from streams.cli import main

KEY = b"unit-test-pii-key"
RECEIVED = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
JOURNEYS = """\
version: 3
journeys:
  - name: shop
    stages: [{name: browse, match: [{touchpoint: "product.*"}], timeout: 1h}]
    goal: [{touchpoint: "order.placed"}]
"""
SOURCES = """\
sources:
  web-sdk:
    rules:
      - event: Checkout Payment Submitted
        where: {status: [failed, declined]}
        touchpoint: checkout.payment
        action: pay
        outcome: error
        outcome_reason: payment_declined
      - event: Checkout Payment Submitted
        touchpoint: checkout.payment
        action: pay
      - event: "Support *"
        channel: chat
        touchpoint: support.contact
        wait: queue.seconds
      - event: Order Completed
        touchpoint: order.placed
        revenue: order.total
        currency: order.currency
      - event: Survey Answered
        touchpoint: survey.csat
        csat: answer
      - event: "*/nps_response"
        touchpoint: survey.nps
        nps: score
      - event: "checkout.*"
        touchpoint: checkout.step
  delighted:
    webhook:
      kind: nps
      score: event_data.score
      email: event_data.person.email
      customer_id: event_data.person.id
      occurred_at: event_data.created_at
      response_id: event_data.id
      signature: {header: X-Delighted-Webhook-Signature, secret: delighted, encoding: base64}
"""


def catalog(sources: str = SOURCES) -> JourneyCatalog:
    return parse_catalog(JOURNEYS + sources, "journeys.yaml")


def web() -> SourceMapping:
    return catalog().sources["web-sdk"]


def track(name: str, properties: dict[str, Any], mapping: SourceMapping | None = None) -> Any:
    message = {"type": "track", "event": name, "userId": "c-1", "properties": properties}
    unmapped: list[str] = []
    result = map_message(0, message, SegmentRequest([message]), RECEIVED, mapping, unmapped)
    return result, unmapped


def prepare(mapped: dict[str, Any]) -> TouchpointEvent | ItemError:
    return prepare_event(
        0,
        mapped,
        source="web-sdk",
        allowed_channels=None,
        received_at=RECEIVED,
        pii_key=KEY,
        max_age=timedelta(days=395),
    )


# --- rules ---------------------------------------------------------------------------------


def test_the_first_matching_rule_names_the_event_and_where_selects_on_properties() -> None:
    event, unmapped = track("Checkout Payment Submitted", {"status": "declined"}, web())
    assert (event["touchpoint"], event["action"], event["outcome"]) == (
        "checkout.payment",
        "pay",
        "error",
    )
    assert event["outcome_reason"] == "payment_declined"
    assert unmapped == []
    event, _ = track("Checkout Payment Submitted", {"status": "ok"}, web())
    assert (event["touchpoint"], event["action"], event.get("outcome")) == (
        "checkout.payment",
        "pay",
        None,
    )


def test_rules_read_wait_revenue_and_scores_and_set_the_channel() -> None:
    event, _ = track("Support Chat Started", {"queue": {"seconds": 95.5}}, web())
    assert (event["touchpoint"], event["channel"], event["wait_ms"]) == (
        "support.contact",
        "chat",
        95_500,
    )
    event, _ = track("Order Completed", {"order": {"total": "42.5", "currency": "eur"}}, web())
    assert (event["touchpoint"], event["revenue"], event["currency"]) == (
        "order.placed",
        "42.5000",
        "EUR",
    )
    event, _ = track("Survey Answered", {"answer": "4"}, web())
    assert isinstance(prepare(event), TouchpointEvent)
    assert (event["touchpoint"], event["csat"]) == ("survey.csat", 4)


def test_a_property_a_rule_cannot_use_is_refused_naming_it() -> None:
    error, _ = track("Survey Answered", {"answer": 9}, web())
    assert isinstance(error, ItemError)
    assert (error.reason, error.field) == ("invalid_field", "properties.answer")
    error, _ = track("Order Completed", {"order": {"total": "a lot"}}, web())
    assert isinstance(error, ItemError) and error.field == "properties.order.total"


def test_an_unmapped_event_keeps_its_default_name_and_is_reported() -> None:
    event, unmapped = track("Newsletter Signed Up", {"plan": "weekly"}, web())
    assert event["touchpoint"] == "newsletter.signed_up"
    assert unmapped == ["Newsletter Signed Up"]


def test_a_source_without_rules_gives_the_default_names() -> None:
    properties = {"revenue": 19.99, "currency": "eur", "step": 2}
    bare, unmapped = track("Checkout Payment Submitted", copy.deepcopy(properties))
    empty, _ = track("Checkout Payment Submitted", copy.deepcopy(properties), SourceMapping())
    assert bare == empty
    assert bare["touchpoint"] == "checkout.payment_submitted"
    assert unmapped == ["Checkout Payment Submitted"]


def snowplow(payload: dict[str, Any], mapping: SourceMapping | None) -> Any:
    unmapped: list[str] = []
    return map_event(0, payload, RECEIVED, mapping, unmapped), unmapped


def test_snowplow_structured_and_self_describing_events_go_through_the_same_rules() -> None:
    event, unmapped = snowplow(
        {"e": "se", "se_ca": "checkout", "se_ac": "coupon", "duid": "d-1"}, web()
    )
    assert (event["touchpoint"], unmapped) == ("checkout.step", [])
    ue = {
        "schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
        "data": {"schema": "iglu:com.acme/nps_response/jsonschema/1-0-0", "data": {"score": 3}},
    }
    event, unmapped = snowplow({"e": "ue", "ue_pr": orjson.dumps(ue).decode(), "uid": "c"}, web())
    assert (event["touchpoint"], event["nps"], unmapped) == ("survey.nps", 3, [])
    event, unmapped = snowplow({"e": "se", "se_ca": "Video", "se_ac": "play", "duid": "d"}, web())
    assert (event["touchpoint"], unmapped) == ("video.play", ["Video.play"])
    event, unmapped = snowplow({"e": "pv", "page": "Home", "duid": "d"}, web())
    assert (event["touchpoint"], unmapped) == ("home", [])  # page views: not mapped, not counted


def test_unmapped_names_are_bounded_labels() -> None:
    names = UnmappedNames(limit=2)
    assert [names.label("web", n) for n in ("a", "b", "c", "a", "d")] == [
        "a",
        "b",
        "other",
        "a",
        "other",
    ]
    assert names.label("app", "c") == "c"  # per source
    assert names.label("web", "x" * 300) == "other"
    assert len(UnmappedNames().label("web", "x" * 300)) == 100


def test_lookup_follows_names_and_list_indices() -> None:
    document = {"a": {"b": [{"c": 1}, {"c": 2}]}}
    assert lookup(document, "a.b.1.c") == (True, 2)
    assert lookup(document, "$.a.b.0.c") == (True, 1)
    assert lookup(document, "a.b.2.c") == (False, None)
    assert lookup(document, "a.x") == (False, None)


# --- survey webhooks -------------------------------------------------------------------


def delighted() -> Any:
    webhook = catalog().sources["delighted"].webhook
    assert webhook is not None
    return webhook


DELIGHTED = {
    "event_type": "survey_response.created",
    "event_data": {
        "id": "5435",
        "score": 9,
        "created_at": 1765108800,
        "person": {"id": "c-77", "email": "Jane.Doe@Example.com"},
    },
}


def test_a_survey_response_becomes_a_survey_touchpoint_with_the_hashed_email() -> None:
    body = orjson.dumps(DELIGHTED)
    event = survey_event(delighted(), DELIGHTED, body, RECEIVED)
    assert isinstance(event, dict)
    prepared = prepare(dict(event))
    assert isinstance(prepared, TouchpointEvent), prepared
    assert (prepared.touchpoint, prepared.nps, prepared.event_id) == ("survey.nps", 9, "5435")
    assert prepared.email_hash == hash_email("Jane.Doe@Example.com", KEY)
    assert prepared.customer_id == "c-77"
    assert prepared.occurred_at == datetime(2025, 12, 7, 12, 0, tzinfo=UTC)
    assert "Jane" not in prepared.to_json().decode()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["event_data"].pop("score"), "event_data.score"),
        (lambda d: d["event_data"].update(score=11), "event_data.score"),
        (lambda d: d["event_data"].update(score="nine"), "event_data.score"),
        (lambda d: d["event_data"].pop("person"), "event_data.person.email"),
        (lambda d: d["event_data"].pop("id"), "event_data.id"),
        (lambda d: d["event_data"].update(created_at="yesterday"), "event_data.created_at"),
    ],
)
def test_a_malformed_response_is_refused_naming_the_path(change: Any, field: str) -> None:
    document = copy.deepcopy(DELIGHTED)
    change(document)
    error = survey_event(delighted(), document, orjson.dumps(document), RECEIVED)
    assert isinstance(error, ItemError)
    assert error.field.startswith(field), error


def test_without_a_response_id_a_resent_body_gets_the_same_event_id() -> None:
    webhook = delighted().model_copy(update={"response_id": None})
    body = orjson.dumps(DELIGHTED)
    first = survey_event(webhook, DELIGHTED, body, RECEIVED)
    again = survey_event(webhook, DELIGHTED, body, RECEIVED + timedelta(minutes=5))
    assert isinstance(first, dict) and isinstance(again, dict)
    assert first["event_id"] == again["event_id"]


def test_signatures_hex_and_base64_with_a_prefix() -> None:
    body, secret = b'{"score": 9}', b"webhook-secret"
    digest = hmac.new(secret, body, hashlib.sha256).digest()
    hex_sig = Signature(header="X-Sig", secret="s", prefix="sha256=")
    assert signature_valid(hex_sig, secret, body, "sha256=" + digest.hex())
    assert signature_valid(hex_sig, secret, body, digest.hex().upper())
    assert not signature_valid(hex_sig, secret, body + b" ", "sha256=" + digest.hex())
    assert not signature_valid(hex_sig, b"other", body, digest.hex())
    assert not signature_valid(hex_sig, secret, body, None)
    assert not signature_valid(hex_sig, secret, body, "é")
    b64 = Signature(header="X-Sig", secret="s", encoding="base64")
    assert signature_valid(b64, secret, body, base64.b64encode(digest).decode())
    assert not signature_valid(b64, secret, body, digest.hex())


# --- the journeys file -----------------------------------------------------------------


def test_the_shipped_journeys_file_is_valid_and_maps_nothing_by_default() -> None:
    assert load_catalog().sources == {}


def test_errors_in_the_sources_section_name_the_line() -> None:
    text = JOURNEYS + textwrap.dedent(
        """\
        sources:
          web-sdk:
            rules:
              - event: Checkout Payment Submitted
                touchpoint: Checkout.Payment
              - event: Order Completed
                outcome: maybe
              - touchpoint: order.placed
              - event: Refund
                csat: "two words"
                colour: blue
          survey:
            webhook:
              kind: ces
              score: score
          quiet:
            webhook:
              kind: csat
              score: rating
        """
    )
    with pytest.raises(DefinitionError) as raised:
        parse_catalog(text, "journeys.yaml")
    found = {(p.line, p.where) for p in raised.value.problems}
    assert found == {
        (10, "sources.web-sdk.rules[0].touchpoint"),
        (12, "sources.web-sdk.rules[1].outcome"),
        (13, "sources.web-sdk.rules[2].event"),
        (15, "sources.web-sdk.rules[3].csat"),
        (16, "sources.web-sdk.rules[3].colour"),
        (19, "sources.survey.webhook.kind"),
        (23, "sources.quiet.webhook"),  # the line of its first field
    }, raised.value
    assert "journeys.yaml:23: sources.quiet.webhook: a webhook needs email or customer_id" in str(
        raised.value
    )


# --- properties ------------------------------------------------------------------------

_names = st.sampled_from(
    ["Checkout Payment Submitted", "Order Completed", "checkout.coupon", "*", "Support *", "a/b"]
)
_paths = st.sampled_from(["a", "a.b", "score", "items.0.price", "$.x", "", "a..b"])
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 20), st.floats(allow_nan=False), st.text(max_size=5)
)
_rule = st.fixed_dictionaries(
    {"event": st.one_of(_names, st.text(max_size=8))},
    optional={
        "where": st.dictionaries(_paths, st.one_of(_scalars, st.lists(_scalars, max_size=3))),
        "touchpoint": st.sampled_from(["survey.csat", "checkout.payment", "Bad Name"]),
        "action": st.sampled_from(["pay", "view", "x-y"]),
        "outcome": st.sampled_from(["ok", "error", "abandoned", "maybe"]),
        "outcome_reason": st.sampled_from(["declined", "9"]),
        "channel": st.sampled_from(["web", "chat", "call_center", "moon"]),
        "csat": _paths,
        "nps": _paths,
        "revenue": _paths,
        "currency": _paths,
        "wait": _paths,
        "wait_unit": st.sampled_from(["s", "ms", "h"]),
    },
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "b", "x"]), inner)
    ),
    max_leaves=8,
)
_properties = st.dictionaries(
    st.sampled_from(["a", "score", "items", "x", "status", "revenue"]), _json, max_size=5
)


@settings(
    max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
@given(rules=st.lists(_rule, max_size=4), name=_names, properties=_properties)
def test_any_accepted_rules_file_maps_any_event_without_raising(
    rules: list[dict[str, Any]], name: str, properties: dict[str, Any]
) -> None:
    text = JOURNEYS + yaml.safe_dump({"sources": {"web-sdk": {"rules": rules}}})
    try:
        mapping = parse_catalog(text).sources["web-sdk"]
    except DefinitionError:
        assume(False)
        return
    result, _ = track(name, copy.deepcopy(properties), mapping)
    if isinstance(result, dict):
        assert isinstance(prepare(result), TouchpointEvent | ItemError)
    category, _, action = name.partition(" ")
    se = {"e": "se", "se_ca": category, "se_ac": action or "x", "duid": "d", "se_la": "l"}
    assert isinstance(map_event(0, se, RECEIVED, mapping, []), dict | ItemError)
    ue = {"schema": "iglu:com.acme/x/jsonschema/1-0-0", "data": properties}
    outer = {"schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0"}
    payload = {"e": "ue", "ue_pr": orjson.dumps({**outer, "data": ue}).decode(), "duid": "d"}
    assert isinstance(map_event(0, payload, RECEIVED, mapping, []), dict | ItemError)


@settings(max_examples=200)
@given(name=st.text(min_size=1, max_size=40), properties=_properties)
def test_a_rule_less_source_maps_as_today(name: str, properties: dict[str, Any]) -> None:
    bare, _ = track(name, copy.deepcopy(properties))
    with_empty, unmapped = track(name, copy.deepcopy(properties), SourceMapping())
    assert bare == with_empty
    if isinstance(bare, dict):
        assert unmapped == [name]


@settings(max_examples=300)
@given(document=_json, score=_scalars, email=_scalars)
def test_any_webhook_body_maps_without_raising(document: Any, score: Any, email: Any) -> None:
    webhook = delighted()
    for body in (document, {"event_data": {"score": score, "person": {"email": email}}}):
        result = survey_event(webhook, body, orjson.dumps(body), RECEIVED)
        if isinstance(result, dict):
            assert isinstance(prepare(result), TouchpointEvent | ItemError)


def test_journeys_check_lists_the_sources_and_names_the_line_of_a_bad_rule(
    tmp_path: Path,
) -> None:
    good = tmp_path / "journeys.yaml"
    good.write_text(JOURNEYS + SOURCES)
    result = CliRunner().invoke(main, ["journeys", "check", str(good)])
    assert result.exit_code == 0, result.output
    assert "source web-sdk: 7 rules\nsource delighted: 0 rules, webhook (nps)\n" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(JOURNEYS + SOURCES.replace("channel: chat", "channel: pigeon"))
    result = CliRunner().invoke(main, ["journeys", "check", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:19: sources.web-sdk.rules[2].channel: Input should be" in result.output
