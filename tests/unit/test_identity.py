"""The identity graph on its own: over-merge protection and what it refuses."""

from __future__ import annotations

import pytest

from pipeline.identity import IdentityGraph


def test_two_customers_sharing_a_kiosk_are_never_merged_and_the_kiosk_gets_blocked() -> None:
    graph = IdentityGraph(max_customers=2)
    for customer in ("c1", "c2", "c3"):
        person = graph.resolve((("customer_id", customer), ("device_id", "kiosk"))).person_id
        assert person == f"c:{customer}"
    assert "device_id:kiosk" in graph.blocked
    assert graph.owner["device_id:kiosk"] == "c:c1"
    # a blocked identifier no longer resolves to its first customer
    assert graph.resolve((("device_id", "kiosk"),)).person_id == "a:device_id:kiosk"


def test_a_touch_without_identifiers_is_refused_with_a_reason() -> None:
    """It used to raise IndexError from deep inside (``usable[0]``)."""
    with pytest.raises(ValueError, match="without identifiers"):
        IdentityGraph().resolve_keys([])
