-- One outcome per journey, revised at most once (docs/journey-engine.md, "Outcomes"). A drop-off
-- that touchpoints within resume_within then convert is retracted: the engine emits
-- dropoff_retracted (same at, journey, stage and channel as the drop-off, and the drop-off's
-- output_id in detail.retracts) just before converted, and the sink deletes the drop-off's row from
-- journey_events (sinks/clickhouse/writer.py): journey_events FINAL holds one terminal outcome
-- per journey. The rollups are filled on insert and cannot forget a row: the retraction lands in
-- the drop-off's own (minute, journey, stage, channel) and journey_flow_1m reports dropped_off
-- net of it. The journeys view ranks outcomes (merged > converted > dropped_off > active)
-- instead of taking the one with the latest event time (a drop-off is stamped with its deadline,
-- later than the touchpoints that revise it), so it does not depend on arrival order, and a journey
-- that converted scores its conversion's peak-end score. Journeys revised before this migration
-- have no retraction: their old drop-offs stay in journey_events and the rollups (the journeys
-- view shows them converted).
CREATE OR REPLACE VIEW {db}.journey_flow_1m AS
SELECT minute, journey, stage, channel, name, journeys
FROM (
    SELECT minute, journey, stage, channel, name,
        uniqExactMerge(outputs) AS outputs_n,
        outputs_n - if(
            name = 'dropped_off',
            sum(if(name = 'dropoff_retracted', outputs_n, 0))
                OVER (PARTITION BY minute, journey, stage, channel),
            0
        ) AS journeys
    FROM {db}.journey_rollup_1m
    GROUP BY minute, journey, stage, channel, name
)
WHERE journeys != 0;

ALTER TABLE {db}.journey_state_agg
    ADD COLUMN IF NOT EXISTS outcome_rank SimpleAggregateFunction(max, UInt8) DEFAULT 0;

DROP VIEW IF EXISTS {db}.journey_state_events_mv;

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
    argMaxState(CAST(NULL AS Nullable(Float64)), toDateTime64(0, 3, 'UTC')) AS score,
    max(toUInt8(multiIf(name = 'merged', 4, name = 'converted', 3, name = 'dropped_off', 2, 1)))
        AS outcome_rank
FROM {db}.journey_events
WHERE type = 'journey' AND journey_id != ''
GROUP BY journey_id, journey;

DROP VIEW IF EXISTS {db}.journey_state_scores_mv;

-- A conversion's score outranks a drop-off's (stamped with its deadline, later): + 100 years.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.journey_state_scores_mv TO {db}.journey_state_agg AS
SELECT
    journey_id, journey,
    argMaxState(person_id, toDateTime64(0, 3, 'UTC')) AS person_id,
    min(toDateTime64('2106-01-01 00:00:00', 3, 'UTC')) AS started_at,
    max(toDateTime64(0, 3, 'UTC')) AS last_at,
    argMaxState('', toDateTime64(0, 3, 'UTC')) AS status,
    argMaxState('', toDateTime64(0, 3, 'UTC')) AS stage,
    CAST([], 'Array(String)') AS channels,
    argMaxState(
        CAST(value AS Nullable(Float64)),
        if(JSONExtractString(detail, 'outcome') = 'converted', addYears(at, 100), at)
    ) AS score,
    toUInt8(0) AS outcome_rank
FROM {db}.experience_moments
WHERE type = 'score' AND journey_id != ''
GROUP BY journey_id, journey;

-- Backfill: every journey's state again from the raw tables (the states merge exactly however
-- often a row is written), which also covers rows written while the views were recreated.
INSERT INTO {db}.journey_state_agg
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
    argMaxState(CAST(NULL AS Nullable(Float64)), toDateTime64(0, 3, 'UTC')) AS score,
    max(toUInt8(multiIf(name = 'merged', 4, name = 'converted', 3, name = 'dropped_off', 2, 1)))
        AS outcome_rank
FROM {db}.journey_events
WHERE type = 'journey' AND journey_id != ''
GROUP BY journey_id, journey;

INSERT INTO {db}.journey_state_agg
SELECT
    journey_id, journey,
    argMaxState(person_id, toDateTime64(0, 3, 'UTC')) AS person_id,
    min(toDateTime64('2106-01-01 00:00:00', 3, 'UTC')) AS started_at,
    max(toDateTime64(0, 3, 'UTC')) AS last_at,
    argMaxState('', toDateTime64(0, 3, 'UTC')) AS status,
    argMaxState('', toDateTime64(0, 3, 'UTC')) AS stage,
    CAST([], 'Array(String)') AS channels,
    argMaxState(
        CAST(value AS Nullable(Float64)),
        if(JSONExtractString(detail, 'outcome') = 'converted', addYears(at, 100), at)
    ) AS score,
    toUInt8(0) AS outcome_rank
FROM {db}.experience_moments
WHERE type = 'score' AND journey_id != ''
GROUP BY journey_id, journey;

CREATE OR REPLACE VIEW {db}.journeys AS
SELECT
    journey_id, journey,
    argMaxMerge(person_id) AS person_id,
    min(started_at) AS started_at,
    max(last_at) AS last_at,
    multiIf(
        max(outcome_rank) = 4, 'merged',
        max(outcome_rank) = 3, 'converted',
        max(outcome_rank) = 2, 'dropped_off',
        max(outcome_rank) = 1, 'active',
        argMaxMerge(status)
    ) AS outcome,
    argMaxMerge(stage) AS stage,
    arraySort(groupUniqArrayArray(channels)) AS channels,
    argMaxMerge(score) AS score
FROM {db}.journey_state_agg
GROUP BY journey_id, journey
