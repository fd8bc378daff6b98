-- What the journey agent emits (streams/journeys.py), one row per output: journey events
-- (started, stage_reached, converted, dropped_off, resumed, merged, and identity merges and blocks)
-- and experience moments (negative moments, moments of truth, peak-end scores, KPIs).
-- output_id is deterministic: an output re-emitted after a worker restart has the same id, and
-- ReplacingMergeTree collapses it (query with FINAL or uniqExact(output_id) before a merge).
-- shard_by: cityHash64(output_id)
CREATE TABLE IF NOT EXISTS {db}.journey_events
(
    output_id       String,
    type            LowCardinality(String),
    name            LowCardinality(String),
    at              DateTime64(3, 'UTC'),
    person_id       String,
    journey         LowCardinality(String),
    journey_id      String,
    stage           LowCardinality(String),
    channel         LowCardinality(String),
    touchpoint      LowCardinality(String),
    event_id        String,
    value           Nullable(Float64),
    detail          String,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3),
    kafka_topic     LowCardinality(String),
    kafka_topic_id  LowCardinality(String),
    kafka_partition UInt16,
    kafka_offset    UInt64
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(at)
ORDER BY (journey, name, toDate(at), output_id)
TTL toDateTime(at) + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- shard_by: cityHash64(output_id)
CREATE TABLE IF NOT EXISTS {db}.experience_moments
(
    output_id       String,
    type            LowCardinality(String),
    name            LowCardinality(String),
    at              DateTime64(3, 'UTC'),
    person_id       String,
    journey         LowCardinality(String),
    journey_id      String,
    stage           LowCardinality(String),
    channel         LowCardinality(String),
    touchpoint      LowCardinality(String),
    event_id        String,
    value           Nullable(Float64),
    detail          String,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3),
    kafka_topic     LowCardinality(String),
    kafka_topic_id  LowCardinality(String),
    kafka_partition UInt16,
    kafka_offset    UInt64
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(at)
ORDER BY (type, name, toDate(at), output_id)
TTL toDateTime(at) + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;
