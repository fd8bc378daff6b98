-- Rollups per minute x journey x stage x channel, filled by materialized views as the sink
-- writes journey_events and experience_moments, so that dashboards and KPI panels read
-- thousands of rows, never the raw events. Each count is the exact number of distinct
-- output_ids (uniqExact state): an output written twice (a worker re-emitting after a crash,
-- a replay) counts once, as in the raw tables. Read with uniqExactMerge(outputs), or through
-- the views journey_flow_1m / experience_moments_1m. On a cluster every source row of one
-- output_id is on one shard (shard_by cityHash64(output_id)), and the Distributed table merges
-- the shards' states.
-- shard_by: rand()
CREATE TABLE IF NOT EXISTS {db}.journey_rollup_1m
(
    minute   DateTime('UTC'),
    journey  LowCardinality(String),
    stage    LowCardinality(String),
    channel  LowCardinality(String),
    name     LowCardinality(String),
    outputs  AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (journey, name, stage, channel, minute)
TTL minute + INTERVAL {retention_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.journey_rollup_1m_mv TO {db}.journey_rollup_1m AS
SELECT
    toStartOfMinute(at) AS minute, journey, stage, channel, name,
    uniqExactState(output_id) AS outputs
FROM {db}.journey_events
WHERE type = 'journey'
GROUP BY minute, journey, stage, channel, name;

-- shard_by: rand()
CREATE TABLE IF NOT EXISTS {db}.moment_rollup_1m
(
    minute   DateTime('UTC'),
    type     LowCardinality(String),
    name     LowCardinality(String),
    journey  LowCardinality(String),
    stage    LowCardinality(String),
    channel  LowCardinality(String),
    outputs  AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (type, name, journey, stage, channel, minute)
TTL minute + INTERVAL {retention_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.moment_rollup_1m_mv TO {db}.moment_rollup_1m AS
SELECT
    toStartOfMinute(at) AS minute, type, name, journey, stage, channel,
    uniqExactState(output_id) AS outputs
FROM {db}.experience_moments
WHERE type IN ('negative_moment', 'moment_of_truth')
GROUP BY minute, type, name, journey, stage, channel;

CREATE VIEW IF NOT EXISTS {db}.journey_flow_1m AS
SELECT minute, journey, stage, channel, name, uniqExactMerge(outputs) AS journeys
FROM {db}.journey_rollup_1m
GROUP BY minute, journey, stage, channel, name;

CREATE VIEW IF NOT EXISTS {db}.experience_moments_1m AS
SELECT minute, type, name, journey, stage, channel, uniqExactMerge(outputs) AS moments
FROM {db}.moment_rollup_1m
GROUP BY minute, type, name, journey, stage, channel
