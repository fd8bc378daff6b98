-- Closed-loop actions the actions agent could not deliver (actions.dlq, streams/actions.py): a
-- 4xx other than 408/429, or every try of a 5xx / time-out / refused connection used up. One
-- row per trigger and rule (idempotency_key = output_id:rule), with the reason, the last HTTP
-- status (0: no answer), the tries, the receiver's answer (cut to 500 characters), the URL
-- without query or credentials, and the trigger output (JSON). docs/actions.md.
CREATE TABLE IF NOT EXISTS {db}.action_failures
(
    failed_at       DateTime64(3, 'UTC'),
    rule            LowCardinality(String),
    reason          LowCardinality(String),
    status          UInt16,
    attempts        UInt16,
    idempotency_key String,
    output_id       String,
    person_id       String,
    url             String,
    answer          String,
    trigger         String,
    kafka_topic     LowCardinality(String),
    kafka_topic_id  LowCardinality(String),
    kafka_partition UInt16,
    kafka_offset    UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(failed_at)
ORDER BY (rule, reason, failed_at)
TTL toDateTime(failed_at) + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;
