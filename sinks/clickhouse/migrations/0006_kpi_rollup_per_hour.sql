-- KPIs per hour x journey x channel x KPI (csat, nps, first_contact_resolution,
-- complaint_response, conversion, ltv_increment, churn_risk), filled by a materialized view as
-- the sink writes experience moments, for dashboards that read KPIs over weeks. Each group keeps
-- its distinct (output_id, value) pairs: a KPI a worker emitted twice (after a crash) counts once,
-- so counts, sums, means and exact quantiles stay exact. KPI rows are few (surveys, purchases,
-- resolved cases), so the sets stay small. Read through the view kpis_1h.
-- shard_by: rand()
CREATE TABLE IF NOT EXISTS {db}.kpi_rollup_1h
(
    hour     DateTime('UTC'),
    journey  LowCardinality(String),
    channel  LowCardinality(String),
    name     LowCardinality(String),
    answers  AggregateFunction(groupUniqArray, Tuple(String, Float64))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (name, journey, channel, hour)
TTL hour + INTERVAL {retention_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.kpi_rollup_1h_mv TO {db}.kpi_rollup_1h AS
SELECT
    toStartOfHour(at) AS hour, journey, channel, name,
    groupUniqArrayState((output_id, ifNull(value, 0))) AS answers
FROM {db}.experience_moments
WHERE type = 'kpi'
GROUP BY hour, journey, channel, name;

-- One row per hour x journey x channel x KPI: how many, their sum and mean, and the values
-- themselves (sorted) for quantiles: quantileExact over several hours is
-- arrayReduce('quantileExact(0.9)', arrayFlatten(groupArray(values))).
CREATE VIEW IF NOT EXISTS {db}.kpis_1h AS
SELECT
    hour, journey, channel, name,
    length(pairs) AS n,
    arraySum(arrayMap(p -> p.2, pairs)) AS total,
    total / n AS mean,
    arraySort(arrayMap(p -> p.2, pairs)) AS values
FROM (
    SELECT hour, journey, channel, name, groupUniqArrayMerge(answers) AS pairs
    FROM {db}.kpi_rollup_1h
    GROUP BY hour, journey, channel, name
)
