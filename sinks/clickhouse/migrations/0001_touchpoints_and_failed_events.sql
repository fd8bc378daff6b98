-- Validated touchpoints, PII-free (e-mail and phone only as keyed hashes).
-- ReplacingMergeTree on event_id: a touchpoint re-sent by a producer collapses on merge.
-- kafka_topic_id/partition/offset let the sink skip what it already wrote after a restart
-- (the id changes when a topic is re-created and its offsets start again).
-- shard_by: cityHash64(event_id)
CREATE TABLE IF NOT EXISTS {db}.touchpoints
(
    event_id        String,
    occurred_at     DateTime64(3, 'UTC'),
    received_at     DateTime64(3, 'UTC'),
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3),
    channel         LowCardinality(String),
    touchpoint      LowCardinality(String),
    action          LowCardinality(String),
    outcome         LowCardinality(String),
    outcome_reason  LowCardinality(String),
    anonymous_id    String,
    device_id       String,
    customer_id     String,
    email_hash      String,
    phone_hash      String,
    loyalty_id      String,
    session_hint    String,
    duration_ms     Nullable(UInt32),
    wait_ms         Nullable(UInt32),
    csat            Nullable(UInt8),
    nps             Nullable(UInt8),
    sentiment       Nullable(Float32),
    revenue         Nullable(Decimal(18, 4)),
    currency        LowCardinality(String),
    source          LowCardinality(String),
    attributes      String,
    schema_version  UInt8,
    kafka_topic     LowCardinality(String),
    kafka_topic_id  LowCardinality(String),
    kafka_partition UInt16,
    kafka_offset    UInt64
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (channel, toDate(occurred_at), event_id)
TTL toDateTime(occurred_at) + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- Everything the ingest refused, with the reason and the (PII-redacted) original bytes.
CREATE TABLE IF NOT EXISTS {db}.failed_events
(
    failed_at       DateTime64(3, 'UTC'),
    reason          LowCardinality(String),
    field           String,
    detail          String,
    channel         LowCardinality(String),
    source          LowCardinality(String),
    original_topic  LowCardinality(String),
    original_partition UInt16,
    original_offset UInt64,
    raw             String,
    kafka_topic     LowCardinality(String),
    kafka_topic_id  LowCardinality(String),
    kafka_partition UInt16,
    kafka_offset    UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(failed_at)
ORDER BY (reason, failed_at)
TTL toDateTime(failed_at) + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;
