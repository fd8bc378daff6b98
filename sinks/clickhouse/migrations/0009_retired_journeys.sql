-- Journeys ended because the journeys file no longer has their journey or stage (the engine's
-- `retired` outcome: docs/journey-engine.md, "Editing journeys"): the journeys view shows them
-- `retired`, not active for ever. journey_state_events_mv already folds a `retired` row into the
-- journey's state (times, person, stage, channels: rank 1 like any non-terminal row): a second
-- view adds its rank, 5, and nothing else (no view is dropped: no row can slip between a drop
-- and a create). A retired journey never also converts or merges (it leaves the engine's state),
-- so rank 5 only has to outrank `active` (1) and an earlier drop-off (2) of the same journey.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.journey_state_retired_mv TO {db}.journey_state_agg AS
SELECT
    journey_id, journey,
    argMaxState(person_id, toDateTime64(0, 3, 'UTC')) AS person_id,
    min(toDateTime64('2106-01-01 00:00:00', 3, 'UTC')) AS started_at,
    max(toDateTime64(0, 3, 'UTC')) AS last_at,
    argMaxState('', toDateTime64(0, 3, 'UTC')) AS status,
    argMaxState('', toDateTime64(0, 3, 'UTC')) AS stage,
    CAST([], 'Array(String)') AS channels,
    argMaxState(CAST(NULL AS Nullable(Float64)), toDateTime64(0, 3, 'UTC')) AS score,
    toUInt8(5) AS outcome_rank
FROM {db}.journey_events
WHERE type = 'journey' AND name = 'retired' AND journey_id != ''
GROUP BY journey_id, journey;

CREATE OR REPLACE VIEW {db}.journeys AS
SELECT
    journey_id, journey,
    argMaxMerge(person_id) AS person_id,
    min(started_at) AS started_at,
    max(last_at) AS last_at,
    multiIf(
        max(outcome_rank) = 5, 'retired',
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
