-- Touchpoints per minute x channel x touchpoint x outcome, filled by a materialized view as the
-- sink writes touchpoints: the live page's traffic per channel and the dashboards' volume
-- panels read thousands of rows, never the raw touchpoints. Counts are plain sums (a distinct-id
-- state would hold every event id and make a month-long panel take seconds): the sink never
-- writes a Kafka record twice (high-water offsets, deduplication tokens that also apply to
-- this materialized view), so the only
-- difference from the raw table is an event a producer itself sent twice with the same
-- event_id, counted twice here and once in `touchpoints` after its merge.
-- Read with sum(events), or through the view touchpoints_1m.
-- shard_by: rand()
CREATE TABLE IF NOT EXISTS {db}.touchpoint_rollup_1m
(
    minute     DateTime('UTC'),
    channel    LowCardinality(String),
    touchpoint LowCardinality(String),
    outcome    LowCardinality(String),
    events     SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (channel, touchpoint, outcome, minute)
TTL minute + INTERVAL {retention_days} DAY
-- a retried insert dropped by `touchpoints` is dropped here too (the writer inserts with
-- deduplicate_blocks_in_dependent_materialized_views)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touchpoint_rollup_1m_mv TO {db}.touchpoint_rollup_1m AS
SELECT
    toStartOfMinute(occurred_at) AS minute, channel, touchpoint, outcome,
    count() AS events
FROM {db}.touchpoints
GROUP BY minute, channel, touchpoint, outcome;

-- Rows of the rollup as they are stored (parts not yet merged can hold a key more than once):
-- always sum(touchpoints). Without a GROUP BY here, a panel's own aggregation is the only one.
CREATE VIEW IF NOT EXISTS {db}.touchpoints_1m AS
SELECT minute, channel, touchpoint, outcome, events AS touchpoints
FROM {db}.touchpoint_rollup_1m
