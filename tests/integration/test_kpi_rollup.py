"""The hourly KPI rollup (materialized view into AggregatingMergeTree) against the engine's
KPI outputs, with every output written twice as after a worker's crash."""

from __future__ import annotations

from collections import defaultdict

import pytest

from tests.helpers import ClickHouse
from tests.integration.test_live_figures import DAY, fill
from tests.live_figures import morning

pytestmark = pytest.mark.integration


def test_the_kpi_rollup_is_exact_under_duplicates(clickhouse: ClickHouse) -> None:
    client, db = clickhouse
    outputs = fill(client, db, morning(int(DAY.timestamp() * 1000)))
    truth: dict[str, list[float]] = defaultdict(list)
    for output in {o.output_id: o for o in outputs if o.type == "kpi"}.values():
        truth[output.name].append(output.value or 0.0)
    assert {"csat", "nps", "first_contact_resolution", "conversion"} <= set(truth)
    rolled = {
        name: (int(n), float(total), [float(v) for v in values])
        for name, n, total, values in client.query(
            f"SELECT name, sum(n), sum(total), arraySort(arrayFlatten(groupArray(values))) "
            f"FROM {db}.kpis_1h GROUP BY name"
        ).result_rows
    }
    for name, values in truth.items():
        n, total, stored = rolled[name]
        assert n == len(values), name  # each KPI once, though written twice
        assert total == pytest.approx(sum(values)), name
        assert stored == sorted(values), name
    # an exact quantile over hours, as the view's comment says, equals the raw table's
    p90 = client.query(
        f"SELECT arrayReduce('quantileExact(0.9)', arrayFlatten(groupArray(values))) "
        f"FROM {db}.kpis_1h WHERE name = 'conversion'"
    ).result_rows[0][0]
    raw = client.query(
        f"SELECT quantileExact(0.9)(value) FROM {db}.experience_moments FINAL "
        "WHERE type = 'kpi' AND name = 'conversion'"
    ).result_rows[0][0]
    assert p90 == raw
