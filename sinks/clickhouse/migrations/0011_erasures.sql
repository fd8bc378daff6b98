-- The audit of erasures (journeywatch erase, POST /api/v1/customers/{id}/erase): one row per
-- erasure, without personal data. request_hash is an HMAC-SHA256 under the PII hashing key of
-- the salt and the request's identifier keys: whoever holds the key and the identifiers can
-- show that they were erased, nobody else can read them from it. Kept without a TTL
-- (sinks/clickhouse/retention.py WITHOUT_RETENTION): it is the proof that erasures happened.
CREATE TABLE IF NOT EXISTS {db}.erasures
(
    erasure_id      String,
    erased_at       DateTime64(3, 'UTC'),
    requested_by    LowCardinality(String),
    salt            String,
    request_hash    String,
    identifiers     UInt32,
    persons         UInt32,
    shared_kept     UInt32,
    rows_deleted    Map(String, UInt64),
    partitions_told UInt16
)
ENGINE = MergeTree
ORDER BY (erased_at, erasure_id);
