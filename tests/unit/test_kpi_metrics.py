"""The experience KPI metrics (sinks.metrics.ExperienceKpis) against the engine's outputs for a
simulated day: every answer, case, response, score and amount counted once, under bounded
labels only."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from prometheus_client import REGISTRY

from pipeline.contract import Channel, TouchpointEvent
from pipeline.definitions import load_catalog
from pipeline.engine import JourneyEngine, Output
from pipeline.scenario import HOUR, DaySimulator, Incident
from pipeline.touch import Touch
from sinks.metrics import MAX_CURRENCIES, ExperienceKpis

START = 1_780_000_000_000 // 86_400_000 * 86_400_000  # a midnight (UTC)


def day_outputs() -> list[Output]:
    understaffed = Incident("call_centre_understaffed", START + 10 * HOUR, START + 12 * HOUR)
    events = DaySimulator(11, START, 1500, [understaffed]).generate()
    engine = JourneyEngine(load_catalog(), allowed_lateness_ms=60_000)
    outputs: list[Output] = []
    for data in events:
        event = TouchpointEvent.model_validate({**data, "received_at": data["occurred_at"]})
        outputs.extend(engine.submit(Touch.from_event(event)))
    outputs.extend(engine.flush())
    return outputs


def samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of the metric family ``name`` (counters: the _total samples)."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def delta(
    before: dict[tuple[tuple[str, str], ...], float],
    after: dict[tuple[tuple[str, str], ...], float],
) -> dict[tuple[tuple[str, str], ...], float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def key(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def test_the_kpi_metrics_count_every_kpi_output_once() -> None:
    outputs = day_outputs()
    names = (
        "jw_csat_answers_total",
        "jw_nps_answers_total",
        "jw_cases_resolved_total",
        "jw_complaint_response_seconds_count",
        "jw_complaint_response_seconds_sum",
        "jw_peak_end_score_count",
        "jw_peak_end_score_sum",
        "jw_revenue_total",
    )
    before = {name: samples(name) for name in names}
    kpis = ExperienceKpis(load_catalog())
    for output in outputs:
        kpis.observe(output)
    got = {name: delta(before[name], samples(name)) for name in names}

    expected: dict[str, defaultdict[tuple[tuple[str, str], ...], float]] = {
        n: defaultdict(float) for n in names
    }
    for o in outputs:
        journey, channel, value = o.journey or "", o.channel or "", o.value
        assert value is not None or o.type not in ("kpi", "score")
        if o.type == "score":
            labels = key(journey=journey, outcome=dict(o.detail)["outcome"])
            expected["jw_peak_end_score_count"][labels] += 1
            expected["jw_peak_end_score_sum"][labels] += value or 0.0
        elif o.type == "kpi" and o.name == "csat":
            labels = key(journey=journey, channel=channel, score=str(int(value or 0)))
            expected["jw_csat_answers_total"][labels] += 1
        elif o.type == "kpi" and o.name == "nps":
            category = dict(o.detail)["category"]  # the engine's own word for it
            labels = key(journey=journey, channel=channel, category=category)
            expected["jw_nps_answers_total"][labels] += 1
        elif o.type == "kpi" and o.name == "first_contact_resolution":
            first = "yes" if value == 1.0 else "no"
            labels = key(journey=journey, channel=channel, first_contact=first)
            expected["jw_cases_resolved_total"][labels] += 1
        elif o.type == "kpi" and o.name == "complaint_response":
            labels = key(journey=journey, channel=channel)
            expected["jw_complaint_response_seconds_count"][labels] += 1
            expected["jw_complaint_response_seconds_sum"][labels] += value or 0.0
        elif o.type == "kpi" and o.name == "ltv_increment":
            labels = key(journey=journey, channel=channel, currency=dict(o.detail)["currency"])
            expected["jw_revenue_total"][labels] += value or 0.0
    for name in names:
        assert set(got[name]) == set(expected[name]), name
        for labels, amount in expected[name].items():
            assert abs(got[name][labels] - amount) < 1e-6 * max(1.0, amount), (name, labels)
    # the day has every kind: answers good and bad, resolved cases both ways, responses,
    # scores of both outcomes, revenue
    categories = {dict(k)["category"] for k in expected["jw_nps_answers_total"]}
    assert categories == {"promoter", "passive", "detractor"}
    assert {dict(k)["score"] for k in expected["jw_csat_answers_total"]} == set("12345")
    assert {dict(k)["first_contact"] for k in expected["jw_cases_resolved_total"]} == {"yes", "no"}
    assert expected["jw_complaint_response_seconds_count"]
    outcomes = {dict(k)["outcome"] for k in expected["jw_peak_end_score_count"]}
    assert outcomes == {"converted", "dropped_off"}
    assert expected["jw_revenue_total"]


def test_labels_are_bounded_and_answer_series_exist_from_the_start() -> None:
    catalog = load_catalog()
    journeys = {j.name for j in catalog.journeys}
    channels = {c.value for c in Channel}
    ExperienceKpis(catalog)
    nps = samples("jw_nps_answers_total")
    for journey in journeys:
        for channel in channels:
            for category in ("promoter", "passive", "detractor"):
                assert key(journey=journey, channel=channel, category=category) in nps
    for name in ("jw_csat_answers_total", "jw_nps_answers_total", "jw_cases_resolved_total"):
        for labels in samples(name):
            found = dict(labels)
            assert found["journey"] in journeys | {""}, labels
            assert found["channel"] in channels, labels


def test_currencies_beyond_the_first_twenty_are_other() -> None:
    kpis = ExperienceKpis(load_catalog())
    before = samples("jw_revenue_total")

    def purchase(currency: str) -> Output:
        return Output(
            "kpi",
            "ltv_increment",
            f"k-{currency}",
            0,
            "c:1",
            "online_purchase",
            "j",
            None,
            "web",
            "checkout.confirmation",
            "e",
            10.0,
            (("currency", currency),),
        )

    codes = [f"Q{chr(65 + n // 26)}{chr(65 + n % 26)}" for n in range(MAX_CURRENCIES + 5)]
    for code in codes:
        kpis.observe(purchase(code))
    got = delta(before, samples("jw_revenue_total"))
    shown = {dict(k)["currency"]: v for k, v in got.items()}
    assert set(shown) == {*codes[:MAX_CURRENCIES], "other"}
    assert shown["other"] == 50.0


def test_other_outputs_are_ignored() -> None:
    kpis = ExperienceKpis(load_catalog())
    names = ("jw_csat_answers_total", "jw_nps_answers_total", "jw_revenue_total")
    before = {n: samples(n) for n in names}
    ignored: list[Any] = [
        Output("negative_moment", "low_csat", "k1", 0, "c:1", channel="web", value=-0.8),
        Output("kpi", "conversion", "k2", 0, "c:1", "online_purchase", channel="web", value=60.0),
        Output("kpi", "churn_risk", "k3", 0, "c:1", value=60.0),
        Output("kpi", "csat", "k4", 0, "c:1", channel="web", value=None),
    ]
    for output in ignored:
        kpis.observe(output)
    assert all(delta(before[n], samples(n)) == {} for n in names)
