-- Records the journey agent could not apply (journeys.dlq): a touchpoint, an identity hand-off
-- message or a saved journey state record, with the exception, where it was raised and the
-- original bytes (docs/streaming-topology.md, "Records that fail"). original_offset is -1 for
-- a record without a position of its own (a state record: original_key names it).
CREATE TABLE IF NOT EXISTS {db}.journey_errors
(
    failed_at          DateTime64(3, 'UTC'),
    kind               LowCardinality(String),
    reason             LowCardinality(String),
    detail             String,
    stack              String,
    original_topic     LowCardinality(String),
    original_partition UInt16,
    original_offset    Int64,
    original_key       String,
    value              String,
    kafka_topic        LowCardinality(String),
    kafka_topic_id     LowCardinality(String),
    kafka_partition    UInt16,
    kafka_offset       UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(failed_at)
ORDER BY (kind, reason, failed_at)
TTL toDateTime(failed_at) + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;
