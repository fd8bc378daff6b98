-- The latest state of every journey, kept by a materialized view as the sink writes journey
-- events and scores: who, which journey, when it started and last moved, its stage, its
-- outcome (active, converted, dropped_off, or merged into another journey when an identity
-- merge joined two), the channels it used and its peak-end score. Read through the view
-- `journeys` (one row per journey_id): the states merge exactly however often a row was
-- written (argMax, min, max and set unions do not count duplicates).
-- shard_by: rand()
CREATE TABLE IF NOT EXISTS {db}.journey_state_agg
(
    journey_id  String,
    journey     LowCardinality(String),
    person_id   AggregateFunction(argMax, String, DateTime64(3, 'UTC')),
    started_at  SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_at     SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    status      AggregateFunction(argMax, String, DateTime64(3, 'UTC')),
    stage       AggregateFunction(argMax, String, DateTime64(3, 'UTC')),
    channels    SimpleAggregateFunction(groupUniqArrayArray, Array(String)),
    score       AggregateFunction(argMax, Nullable(Float64), DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY (journey, journey_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.journey_state_events_mv TO {db}.journey_state_agg AS
SELECT
    journey_id, journey,
    argMaxState(person_id, at) AS person_id,
    min(if(name = 'started', at, toDateTime64('2106-01-01 00:00:00', 3, 'UTC'))) AS started_at,
    max(at) AS last_at,
    argMaxState(
        multiIf(name IN ('converted', 'dropped_off', 'merged'), name, 'active'), at
    ) AS status,
    argMaxState(stage, at) AS stage,
    groupUniqArray(channel) AS channels,
    argMaxState(CAST(NULL AS Nullable(Float64)), toDateTime64(0, 3, 'UTC')) AS score
FROM {db}.journey_events
WHERE type = 'journey' AND journey_id != ''
GROUP BY journey_id, journey;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.journey_state_scores_mv TO {db}.journey_state_agg AS
SELECT
    journey_id, journey,
    argMaxState(person_id, toDateTime64(0, 3, 'UTC')) AS person_id,
    min(toDateTime64('2106-01-01 00:00:00', 3, 'UTC')) AS started_at,
    max(toDateTime64(0, 3, 'UTC')) AS last_at,
    argMaxState('', toDateTime64(0, 3, 'UTC')) AS status,
    argMaxState('', toDateTime64(0, 3, 'UTC')) AS stage,
    CAST([], 'Array(String)') AS channels,
    argMaxState(CAST(value AS Nullable(Float64)), at) AS score
FROM {db}.experience_moments
WHERE type = 'score' AND journey_id != ''
GROUP BY journey_id, journey;

CREATE VIEW IF NOT EXISTS {db}.journeys AS
SELECT
    journey_id, journey,
    argMaxMerge(person_id) AS person_id,
    min(started_at) AS started_at,
    max(last_at) AS last_at,
    argMaxMerge(status) AS outcome,
    argMaxMerge(stage) AS stage,
    arraySort(groupUniqArrayArray(channels)) AS channels,
    argMaxMerge(score) AS score
FROM {db}.journey_state_agg
GROUP BY journey_id, journey;

-- Identity stitching for analysts: every merge of two persons (an anonymous visitor joined to a
-- customer by a login, a loyalty card, a phone number) and every identifier that stopped being
-- used to merge because too many customers shared it (over-merge protection).
CREATE VIEW IF NOT EXISTS {db}.identity_merges AS
SELECT at, person_id AS into_person, JSONExtractString(detail, 'from_person') AS from_person,
    event_id
FROM {db}.journey_events FINAL
WHERE type = 'identity' AND name = 'merged';

CREATE VIEW IF NOT EXISTS {db}.identifier_blocks AS
SELECT at, detail, person_id, event_id
FROM {db}.journey_events FINAL
WHERE type = 'identity' AND name = 'identifier_blocked'
