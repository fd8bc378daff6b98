-- Touchpoints per minute x channel x touchpoint x outcome, filled by a materialized view as the
-- sink writes touchpoints: the live page's traffic per channel and the dashboards' volume
-- panels read thousands of rows, never the raw touchpoints. Counts are exact distinct
-- event_ids (uniqExact state), so a touchpoint written twice counts once, as in the raw table.
-- Read with uniqExactMerge(events), or through the view touchpoints_1m.
-- shard_by: rand()
CREATE TABLE IF NOT EXISTS {db}.touchpoint_rollup_1m
(
    minute     DateTime('UTC'),
    channel    LowCardinality(String),
    touchpoint LowCardinality(String),
    outcome    LowCardinality(String),
    events     AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (channel, touchpoint, outcome, minute)
TTL minute + INTERVAL {retention_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touchpoint_rollup_1m_mv TO {db}.touchpoint_rollup_1m AS
SELECT
    toStartOfMinute(occurred_at) AS minute, channel, touchpoint, outcome,
    uniqExactState(event_id) AS events
FROM {db}.touchpoints
GROUP BY minute, channel, touchpoint, outcome;

CREATE VIEW IF NOT EXISTS {db}.touchpoints_1m AS
SELECT minute, channel, touchpoint, outcome, uniqExactMerge(events) AS touchpoints
FROM {db}.touchpoint_rollup_1m
GROUP BY minute, channel, touchpoint, outcome
