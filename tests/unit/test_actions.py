"""The closed-loop actions' rules (pipeline/actions.py) and the ``actions:`` section's checks."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline import actions as act
from pipeline.definitions import DefinitionError, parse_catalog

JOURNEYS = """\
version: 1
journeys:
  - name: online_purchase
    stages:
      - {name: cart, match: [{touchpoint: "cart.*"}], timeout: 2h}
      - {name: payment, match: [{touchpoint: "checkout.*"}], timeout: 30m}
    goal: [{touchpoint: "checkout.confirmation"}]
    moments_of_truth:
      - {name: payment, match: [{touchpoint: "checkout.payment"}], weight: 3}
"""

ACTIONS = """\
actions:
  - name: recover_payment
    when: {moment_of_truth_failed: payment, journey: online_purchase}
    webhook:
      url: http://127.0.0.1:1/tickets
      headers:
        Authorization: {secret: helpdesk, prefix: "Bearer "}
        X-Team: cx
      body:
        subject: "Payment failed for {customer_id} at {at_iso}"
        customer: "{customer_id}"
        severity: "{detail.severity}"
        missing: "{detail.nothing}"
        braces: "{{literal}}"
        tags: ["{journey}", "{stage}", 3]
    at_most_once_per: 1h
  - name: cart_dropped
    when: {dropped_off: cart}
    for: {identified: false}
    webhook: {url: "http://127.0.0.1:1/x"}
  - name: detractor
    when: {nps_below: 7}
    for: {min_value: 100, currency: EUR}
    webhook: {url: "http://127.0.0.1:1/x", body: {score: "{value}"}}
  - name: bad_score
    when: {score_below: 40}
    webhook: {url: "http://127.0.0.1:1/x"}
  - name: low_csat
    when: {csat_below: 3}
    webhook: {url: "http://127.0.0.1:1/x"}
  - name: errors
    when: {negative_moment: [error, "call_*"]}
    webhook: {url: "http://127.0.0.1:1/x"}
"""


def output(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "journey",
        "name": "started",
        "at": 1_700_000_000_000,
        "person_id": "c:jane",
        "journey": "online_purchase",
        "journey_id": "j1",
        "stage": "payment",
        "channel": "web",
        "touchpoint": "checkout.payment",
        "event_id": "e1",
        "value": None,
        "output_id": "abcdef0123456789",
        "detail": {},
    }
    return base | fields


@pytest.fixture(scope="module")
def rules() -> dict[str, act.Action]:
    catalog = parse_catalog(JOURNEYS + ACTIONS, "j.yaml")
    return {rule.name: rule for rule in catalog.actions}


def names(rules: dict[str, act.Action], out: dict[str, Any]) -> list[str]:
    return [rule.name for rule in act.matching(tuple(rules.values()), out)]


def test_each_trigger_matches_its_outputs_only(rules: dict[str, act.Action]) -> None:
    failed = output(type="moment_of_truth", name="payment", detail={"passed": False})
    assert names(rules, failed) == ["recover_payment"]
    assert names(rules, failed | {"detail": {"passed": True}}) == []
    assert names(rules, failed | {"journey": "support_case"}) == []
    dropped = output(name="dropped_off", stage="cart")
    assert names(rules, dropped) == ["cart_dropped"]
    assert names(rules, dropped | {"stage": "payment"}) == []
    # identified: false also takes anonymous persons; the others do not
    assert names(rules, dropped | {"person_id": "a:device:1"}) == ["cart_dropped"]
    assert names(rules, failed | {"person_id": "a:device:1"}) == []
    nps = output(type="kpi", name="nps", value=6.0)
    assert names(rules, nps) == ["detractor"]
    assert names(rules, nps | {"value": 7.0}) == []
    score = output(type="score", name="peak_end", value=39.1)
    assert names(rules, score) == ["bad_score"]
    assert names(rules, score | {"value": 40.0}) == []
    csat = output(type="kpi", name="csat", value=2.0)
    assert names(rules, csat) == ["low_csat"]
    assert names(rules, csat | {"value": 3.0}) == []
    for kind, expected in (
        ("error", ["errors"]),
        ("call_abandoned", ["errors"]),
        ("slow_page", []),
    ):
        assert names(rules, output(type="negative_moment", name=kind)) == expected


def test_the_body_is_templated_with_the_outputs_fields(rules: dict[str, act.Action]) -> None:
    out = output(type="moment_of_truth", name="payment", detail={"passed": False, "severity": 0.9})
    body = act.render_body(rules["recover_payment"], out)
    assert body == {
        "subject": "Payment failed for jane at 2023-11-14T22:13:20.000+00:00",
        "customer": "jane",
        "severity": 0.9,  # a whole placeholder keeps its type
        "missing": None,
        "braces": "{literal}",
        "tags": ["online_purchase", "payment", 3],
    }
    assert act.render_body(rules["detractor"], output(type="kpi", name="nps", value=3.0)) == {
        "score": 3.0
    }


def test_secret_headers_come_from_settings_never_the_file(rules: dict[str, act.Action]) -> None:
    rule = rules["recover_payment"]
    assert act.secrets_needed(tuple(rules.values())) == {"helpdesk"}
    assert act.resolve_headers(rule, {"helpdesk": "s3cr3t"}) == {
        "Authorization": "Bearer s3cr3t",
        "X-Team": "cx",
    }
    with pytest.raises(act.MissingSecret, match="'helpdesk'") as raised:
        act.resolve_headers(rule, {"other": "s3cr3t"})
    assert "s3cr3t" not in str(raised.value)


def test_at_most_one_action_per_customer_per_period(rules: dict[str, act.Action]) -> None:
    rule = rules["recover_payment"]  # 1h
    hour = 3_600_000
    assert not act.limited(rule, None, 0)
    assert act.limited(rule, 0, hour - 1)
    assert not act.limited(rule, 0, hour)
    assert act.limited(rule, hour, 1)  # out of order: still within the hour of the last one
    assert rules["cart_dropped"].at_most_once_per == 86_400_000  # the default: a day


def test_min_value_counts_the_customers_revenue_in_its_currency(
    rules: dict[str, act.Action],
) -> None:
    rule = rules["detractor"]  # 100 EUR
    values: dict[str, float] = {}
    assert not act.value_allows(rule, values)
    ltv = output(type="kpi", name="ltv_increment", value=60.0, detail={"currency": "EUR"})
    assert act.is_value(ltv) and not act.is_value(ltv | {"person_id": "a:x"})
    values = act.add_value(values, ltv)
    values = act.add_value(values, ltv | {"detail": {"currency": "USD"}, "value": 500.0})
    assert not act.value_allows(rule, values)
    values = act.add_value(values, ltv)
    assert values == {"EUR": 120.0, "USD": 500.0} and act.value_allows(rule, values)
    assert act.value_allows(rules["bad_score"], {})  # no minimum


def test_retries_and_back_off() -> None:
    assert [act.retryable(s) for s in (None, 500, 503, 408, 429, 400, 404, 410)] == [
        True,
        True,
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    assert [act.backoff_s(n, 0.5, 3.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert act.idempotency_key("abcdef0123456789", "rule") == "abcdef0123456789:rule"


def test_every_rule_has_an_example_that_triggers_it(rules: dict[str, act.Action]) -> None:
    for rule in rules.values():
        example = act.example_output(rule, 1_700_000_000_000)
        assert rule in act.matching((rule,), example), rule.name


@pytest.mark.parametrize(
    ("section", "line", "message"),
    [
        (
            "  - name: a\n    when: {csat_below: 3, nps_below: 5}\n    webhook: {url: 'http://x'}\n",
            2,
            "actions[a].when: give exactly one trigger",
        ),
        (
            "  - name: a\n    when: {csat_below: 3}\n    webhook:\n      url: http://x\n"
            "      body: {a: '{secret}'}\n",
            4,
            "actions[a].webhook: body: unknown placeholder {secret}",
        ),
        (
            "  - name: a\n    when: {csat_below: 3}\n    webhook: {url: 'http://x'}\n"
            "    at_most_once_per: soon\n",
            4,
            "actions[a].at_most_once_per: not a duration: 'soon'",
        ),
        (
            "  - name: a\n    when: {csat_below: 3}\n    webhook:\n      url: http://x\n"
            "      headers: {Idempotency-Key: x}\n",
            4,
            "idempotency-key is set by journeywatch",
        ),
        (
            "  - name: a\n    when: {csat_below: 3}\n    webhook: {url: 'http://x'}\n"
            "  - name: a\n    when: {csat_below: 2}\n    webhook: {url: 'http://x'}\n",
            1,
            "action names must be unique, repeated: a",
        ),
        (
            "  - name: a\n    when: {csat_below: 3}\n    webhook: {url: 'ftp://x'}\n",
            3,
            "actions[a].webhook.url: not an http(s) URL or {secret: NAME}: 'ftp://x'",
        ),
    ],
)
def test_a_wrong_action_is_reported_with_its_line(section: str, line: int, message: str) -> None:
    text = JOURNEYS + "actions:\n" + section
    with pytest.raises(DefinitionError) as raised:
        parse_catalog(text, "j.yaml")
    problems = [str(p) for p in raised.value.problems]
    assert len(problems) == 1 and message in problems[0], problems
    assert problems[0].startswith(f"j.yaml:{line + JOURNEYS.count(chr(10)) + 1}:"), problems


def test_names_no_journey_has_are_warned_about(rules: dict[str, act.Action]) -> None:
    stages = {"online_purchase": {"cart", "payment"}, "support_case": {"contact"}}
    moments = {"online_purchase": {"payment"}, "support_case": set()}
    assert act.unknown_names(tuple(rules.values()), stages, moments) == []
    typo = parse_catalog(
        JOURNEYS
        + "actions:\n"
        + "  - {name: a, when: {dropped_off: [cart, chekout]}, webhook: {url: 'http://x'}}\n"
        + "  - {name: b, when: {moment_of_truth_failed: 'pay*', journey: support_case},"
        + " webhook: {url: 'http://x'}}\n"
        + "  - {name: c, when: {csat_below: 3, journey: nope}, webhook: {url: 'http://x'}}\n",
        "j.yaml",
    ).actions
    assert act.unknown_names(typo, stages, moments) == [
        "action a: dropped_off 'chekout' matches no stage of online_purchase, support_case: "
        "it never fires",
        "action b: moment_of_truth_failed 'pay*' matches no moment of truth of support_case: "
        "it never fires",
        "action c: no journey matches ['nope']",
    ]


def test_what_the_agent_remembers_of_a_customer_is_bounded() -> None:
    day = 86_400_000
    memory = act.empty_memory()
    act.remember(memory, "a:rule", 0, "delivered")
    act.forget_old(memory, 0, 7 * day)
    act.remember(memory, "b:rule", 6 * day, "limited")
    act.forget_old(memory, 6 * day, 7 * day)
    assert act.done_outcome(memory, "a:rule") == "delivered"
    assert not act.stale(memory, 0, 7 * day)
    act.remember(memory, "c:rule", 8 * day, "delivered")
    act.forget_old(memory, 8 * day, 7 * day)  # a:rule is now more than 7 days behind
    assert act.done_outcome(memory, "a:rule") is None
    assert [act.done_outcome(memory, k) for k in ("b:rule", "c:rule")] == ["limited", "delivered"]
    # a trigger that old could no longer be told from one done: not acted on
    assert act.stale(memory, 0, 7 * day) and not act.stale(memory, day, 7 * day)
    act.forget_old(memory, 2 * day, 7 * day)  # an older trigger does not move newest back
    assert memory["newest"] == 8 * day
    for n in range(act.MAX_DONE + 5):
        act.remember(memory, f"k{n}:rule", 8 * day + n, "delivered")
    act.forget_old(memory, 8 * day, 7 * day)
    assert (
        len(memory["done"]) == act.MAX_DONE and act.done_outcome(memory, "k5:rule") == "delivered"
    )
    assert act.done_outcome(memory, "b:rule") is None  # the oldest went first


def test_a_webhook_url_may_come_from_a_secret_and_is_shown_without_it() -> None:
    [hook, desk] = parse_catalog(
        JOURNEYS
        + "actions:\n"
        + "  - {name: chat, when: {csat_below: 3}, webhook: {url: {secret: chat_hook}}}\n"
        + "  - {name: desk, when: {csat_below: 3},"
        + " webhook: {url: 'https://u:p@desk.example.com:8443/api/t?token=x'}}\n",
        "j.yaml",
    ).actions
    url = "https://hooks.example.com/services/T0/B0/KEY123"
    assert act.resolve_url(hook, {"chat_hook": url}) == url
    assert act.shown_url(hook) == "(secret chat_hook)"
    assert act.secrets_needed((hook, desk)) == {"chat_hook"}
    for secrets in ({}, {"chat_hook": "not a url"}):
        with pytest.raises(act.MissingSecret, match="'chat_hook'") as raised:
            act.resolve_url(hook, secrets)
        assert "not a url" not in str(raised.value)
    assert act.resolve_url(desk, {}) == "https://u:p@desk.example.com:8443/api/t?token=x"
    assert act.shown_url(desk) == "https://desk.example.com:8443/api/t"
