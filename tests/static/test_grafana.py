"""The Grafana dashboards and provisioning: current with their generator, well-formed by
Grafana's own dashboard model, laid out on the grid, and every link and variable resolvable.

(Every query is run against real data elsewhere: ClickHouse in
tests/integration/test_dashboards.py, Prometheus in tests/e2e/test_alerting.py.)
"""

from __future__ import annotations

import json
import re
from typing import Any, cast

import pytest
import yaml
from grafana_foundation_sdk.models.dashboard import Dashboard

from tests.grafana import (
    DASHBOARDS,
    GRAFANA,
    all_dashboards,
    builder,
    clickhouse_queries,
    prometheus_queries,
)

BUILTIN = {
    "__rate_interval",
    "__interval",
    "__range",
    "__timeFilter",
    "__timeInterval",
    "__fromTime",
    "__toTime",
    "__field",
    "__url_time_range",
    "__interval_s",
}
VARIABLE = re.compile(r"\$\{?(\w+)")


def test_the_dashboards_are_what_the_generator_builds() -> None:
    built = builder().build()
    shipped = {path.name: json.loads(path.read_text()) for path in DASHBOARDS.glob("*.json")}
    assert shipped == built, "deploy/grafana/dashboards/ is stale: run `make docs`"
    assert {board["uid"] for board in built.values()} == {
        "jw-ops",
        "jw-journey",
        "jw-oncall",
        "jw-analysts",
    }


@pytest.mark.parametrize("name", sorted(p.name for p in DASHBOARDS.glob("*.json")))
def test_every_key_is_one_of_grafanas_dashboard_model(name: str) -> None:
    board = json.loads((DASHBOARDS / name).read_text())
    model = Dashboard.from_json(board).to_json()
    assert set(board) <= set(model), set(board) - set(model)
    panels = cast(list[Any], model["panels"])
    for panel, parsed in zip(board["panels"], panels, strict=True):
        parsed_panel = parsed.to_json()
        assert set(panel) <= set(parsed_panel), (panel["title"], set(panel) - set(parsed_panel))
        assert (parsed_panel["id"], parsed_panel["type"]) == (panel["id"], panel["type"])


@pytest.mark.parametrize("name", sorted(p.name for p in DASHBOARDS.glob("*.json")))
def test_panels_tile_the_grid_without_overlap(name: str) -> None:
    board = json.loads((DASHBOARDS / name).read_text())
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        assert panel["title"] and (panel["type"] == "row" or panel["targets"])


def test_every_variable_used_is_defined_and_every_datasource_provisioned() -> None:
    provisioned = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "datasources.yml").read_text()
    )
    uids = {source["uid"]: source["type"] for source in provisioned["datasources"]}
    for board in all_dashboards():
        defined = {variable["name"] for variable in board["templating"]["list"]}
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                source = target["datasource"]
                assert uids.get(source["uid"]) == source["type"], (board["uid"], source)
                text = target.get("expr") or target.get("rawSql")
                used = set(VARIABLE.findall(text)) - BUILTIN
                assert used <= defined, (board["uid"], panel["title"], used - defined)
            # the data links' variables too (a link's own: __value, __field, __url_time_range)
            links = json.dumps([panel.get("links"), panel.get("fieldConfig")])
            used = {v for v in VARIABLE.findall(links) if not v.startswith("__")}
            assert used <= defined, (board["uid"], panel["title"], used - defined)
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] in uids


def test_the_alerts_link_to_dashboards_and_variables_that_exist() -> None:
    boards = {board["uid"]: board for board in all_dashboards()}
    rules = yaml.safe_load(
        (GRAFANA.parent / "prometheus" / "rules" / "journeywatch.yml").read_text()
    )
    linked = 0
    for group in rules["groups"]:
        for rule in group["rules"]:
            link = rule.get("annotations", {}).get("dashboard")
            if not link:
                continue
            match = re.fullmatch(r"/d/([\w-]+)(?:\?(.*))?", link)
            assert match and match[1] in boards, (rule["alert"], link)
            defined = {v["name"] for v in boards[match[1]]["templating"]["list"]}
            for pair in (match[2] or "").split("&"):
                if pair:
                    assert pair.split("=")[0].removeprefix("var-") in defined, (link, pair)
            linked += 1
    assert linked >= 8


def test_the_query_lists_cover_every_panel() -> None:
    targets = sum(
        len(panel.get("targets", [])) for board in all_dashboards() for panel in board["panels"]
    )
    found: list[Any] = [*prometheus_queries(), *clickhouse_queries()]
    assert len(found) == targets > 40
