-- Every row written into journey_state_agg carries the time it is about, so that the table's
-- time-to-live (last_at + JW_JOURNEY_RETENTION_DAYS, sinks/clickhouse/retention.py) never
-- deletes a row before the journey it belongs to. The score and retired views of 0008 and 0009
-- wrote last_at = 1970 (neutral for max()): under that time-to-live each such row expired at
-- the next merge, and the journeys view lost its scores and showed retired journeys active.
-- New views write last_at = the row's own time (a score's or a retirement's, never later than
-- the journey's outcome, so max(last_at) is unchanged), then the old ones go (created before
-- dropped: no row slips between; a row both write merges to the same state). The backfill
-- writes the old views' rows again with their time.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.journey_state_scores_timed_mv TO {db}.journey_state_agg AS
SELECT
    journey_id, journey,
    argMaxState(person_id, toDateTime64(0, 3, 'UTC')) AS person_id,
    min(toDateTime64('2106-01-01 00:00:00', 3, 'UTC')) AS started_at,
    max(at) AS last_at,
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

DROP VIEW IF EXISTS {db}.journey_state_scores_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.journey_state_retired_timed_mv TO {db}.journey_state_agg AS
SELECT
    journey_id, journey,
    argMaxState(person_id, toDateTime64(0, 3, 'UTC')) AS person_id,
    min(toDateTime64('2106-01-01 00:00:00', 3, 'UTC')) AS started_at,
    max(at) AS last_at,
    argMaxState('', toDateTime64(0, 3, 'UTC')) AS status,
    argMaxState('', toDateTime64(0, 3, 'UTC')) AS stage,
    CAST([], 'Array(String)') AS channels,
    argMaxState(CAST(NULL AS Nullable(Float64)), toDateTime64(0, 3, 'UTC')) AS score,
    toUInt8(5) AS outcome_rank
FROM {db}.journey_events
WHERE type = 'journey' AND name = 'retired' AND journey_id != ''
GROUP BY journey_id, journey;

DROP VIEW IF EXISTS {db}.journey_state_retired_mv;

INSERT INTO {db}.journey_state_agg
SELECT
    journey_id, journey,
    argMaxState(person_id, toDateTime64(0, 3, 'UTC')) AS person_id,
    min(toDateTime64('2106-01-01 00:00:00', 3, 'UTC')) AS started_at,
    max(at) AS last_at,
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

INSERT INTO {db}.journey_state_agg
SELECT
    journey_id, journey,
    argMaxState(person_id, toDateTime64(0, 3, 'UTC')) AS person_id,
    min(toDateTime64('2106-01-01 00:00:00', 3, 'UTC')) AS started_at,
    max(at) AS last_at,
    argMaxState('', toDateTime64(0, 3, 'UTC')) AS status,
    argMaxState('', toDateTime64(0, 3, 'UTC')) AS stage,
    CAST([], 'Array(String)') AS channels,
    argMaxState(CAST(NULL AS Nullable(Float64)), toDateTime64(0, 3, 'UTC')) AS score,
    toUInt8(5) AS outcome_rank
FROM {db}.journey_events
WHERE type = 'journey' AND name = 'retired' AND journey_id != ''
GROUP BY journey_id, journey
