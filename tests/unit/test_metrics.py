"""observe_many gives exactly what observing one amount at a time gives."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from sinks.metrics import observe_many

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
amounts = st.one_of(
    st.sampled_from(BUCKETS),  # on a bound: that bucket (le)
    st.floats(min_value=0, max_value=10, allow_nan=False),
)


def _histogram() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    histogram = Histogram("x_seconds", "x", ["kind"], buckets=BUCKETS, registry=registry)
    return registry, histogram


@given(st.lists(amounts, max_size=50), st.lists(amounts, max_size=5))
def test_observe_many_equals_observing_one_at_a_time(first: list[float], then: list[float]) -> None:
    one_registry, one = _histogram()
    many_registry, many = _histogram()
    one.labels("a")  # the series exists from the start in both
    for batch in (first, then):
        for amount in batch:
            one.labels("a").observe(amount)
        observe_many(many.labels("a"), batch)
    many_samples, one_samples = _samples(many_registry), _samples(one_registry)
    many_sum, one_sum = (
        many_samples.pop('x_seconds_sum{kind="a"}'),
        one_samples.pop('x_seconds_sum{kind="a"}'),
    )
    assert many_samples == one_samples  # every bucket and the count exactly
    assert math.isclose(many_sum, one_sum, rel_tol=1e-9, abs_tol=1e-12)  # summed in another order


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines())
        if not name.startswith("#") and "_created" not in name
    }


def test_metrics_asked_by_name_are_those_samples_alone() -> None:
    """``GET /metrics?name[]=...`` (as prometheus_client's own handler): the named families
    only, each sample as on the whole page; an unknown name gives an empty page."""
    from prometheus_client import Counter, Gauge

    from sinks.metrics import exposition

    registry = CollectorRegistry()
    done = Counter("done", "inputs done", ["topic"], registry=registry)
    done.labels("a").inc(3)
    Gauge("active", "active journeys", registry=registry).set(7)
    whole = exposition(registry)[0].decode().splitlines()
    only = exposition(registry, names=["done_total"])[0].decode().splitlines()
    assert 'done_total{topic="a"} 3.0' in only
    assert not any(line.startswith("active") for line in only)
    assert {line for line in only if not line.startswith("#")} <= set(whole)
    assert any(line.startswith("active 7.0") for line in whole)
    assert exposition(registry, names=["nothing"])[0] == b""
