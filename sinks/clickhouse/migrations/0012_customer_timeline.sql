-- The customer timeline (GET /api/v1/customers/{identifier}, sinks/clickhouse/customers.py):
-- one customer's touchpoints, journeys, moments and identity merges, read by person and by
-- identifier, never by a scan. Three tables, each filled by materialized views as the sink writes
-- what the workers emit, and backfilled here from what is stored already.
--
-- identity_links: which person an identifier belongs to, from when. The engine reports
-- identity/linked once per identifier and person (detail.identifier, the key kind:value, e-mails
-- and phones already hashed); a merge (identity/merged) makes every identifier of the merged
-- anonymous person the other's: it is kept as a link of the merged person's id (a:...) to the
-- person it went into (via 'merged'), so following an identifier forward is a few key lookups.
-- shard_by: cityHash64(identifier)
CREATE TABLE IF NOT EXISTS {db}.identity_links
(
    identifier  String,
    person_id   String,
    at          DateTime64(3, 'UTC'),
    via         LowCardinality(String),
    event_id    String,
    output_id   String,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
ORDER BY (identifier, person_id, via)
TTL toDateTime(at) + INTERVAL {retention_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.identity_links_mv TO {db}.identity_links AS
SELECT
    if(name = 'linked', JSONExtractString(detail, 'identifier'),
       JSONExtractString(detail, 'from_person')) AS identifier,
    person_id, at, name AS via, event_id, output_id
FROM {db}.journey_events
WHERE type = 'identity' AND name IN ('linked', 'merged');

-- person_outputs: every output of the workers (journey_events and experience_moments) again,
-- ordered by person: a customer's journeys, moments, scores, KPIs and merges are one key range.
-- A retracted drop-off stays here beside its dropoff_retracted row (the reader drops it).
-- shard_by: cityHash64(person_id)
CREATE TABLE IF NOT EXISTS {db}.person_outputs
(
    person_id   String,
    at          DateTime64(3, 'UTC'),
    output_id   String,
    type        LowCardinality(String),
    name        LowCardinality(String),
    journey     LowCardinality(String),
    journey_id  String,
    stage       LowCardinality(String),
    channel     LowCardinality(String),
    touchpoint  LowCardinality(String),
    event_id    String,
    value       Nullable(Float64),
    detail      String,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(at)
ORDER BY (person_id, at, output_id)
TTL toDateTime(at) + INTERVAL {retention_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.person_outputs_events_mv TO {db}.person_outputs AS
SELECT person_id, at, output_id, type, name, journey, journey_id, stage, channel, touchpoint,
    event_id, value, detail
FROM {db}.journey_events
WHERE person_id != '';

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.person_outputs_moments_mv TO {db}.person_outputs AS
SELECT person_id, at, output_id, type, name, journey, journey_id, stage, channel, touchpoint,
    event_id, value, detail
FROM {db}.experience_moments
WHERE person_id != '';

-- touchpoints_by_identifier: each touchpoint once under every identifier it carries (keys
-- kind:value, e-mails and phones as keyed hashes), with what the timeline shows of it: the
-- touchpoints of a person are those under its identifiers, one key range each.
-- shard_by: cityHash64(identifier)
CREATE TABLE IF NOT EXISTS {db}.touchpoints_by_identifier
(
    identifier     String,
    occurred_at    DateTime64(3, 'UTC'),
    event_id       String,
    identifiers    Array(String),
    customer_id    String,
    channel        LowCardinality(String),
    touchpoint     LowCardinality(String),
    action         LowCardinality(String),
    outcome        LowCardinality(String),
    outcome_reason LowCardinality(String),
    session_hint   String,
    duration_ms    Nullable(UInt32),
    wait_ms        Nullable(UInt32),
    csat           Nullable(UInt8),
    nps            Nullable(UInt8),
    sentiment      Nullable(Float32),
    revenue        Nullable(Decimal(18, 4)),
    currency       LowCardinality(String),
    source         LowCardinality(String),
    ingested_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (identifier, occurred_at, event_id)
TTL toDateTime(occurred_at) + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touchpoints_by_identifier_mv
TO {db}.touchpoints_by_identifier AS
SELECT identifier, occurred_at, event_id, keys AS identifiers, customer_id, channel, touchpoint,
    action, outcome, outcome_reason, session_hint, duration_ms, wait_ms, csat, nps, sentiment,
    revenue, currency, source
FROM (
    SELECT *, arrayFilter(k -> NOT endsWith(k, ':'), [
        concat('customer_id:', customer_id), concat('loyalty_id:', loyalty_id),
        concat('email_hash:', email_hash), concat('phone_hash:', phone_hash),
        concat('device_id:', device_id), concat('anonymous_id:', anonymous_id)]) AS keys
    FROM {db}.touchpoints
)
ARRAY JOIN keys AS identifier;

-- Backfill from what is stored already.
INSERT INTO {db}.identity_links (identifier, person_id, at, via, event_id, output_id)
SELECT
    if(name = 'linked', JSONExtractString(detail, 'identifier'),
       JSONExtractString(detail, 'from_person')) AS identifier,
    person_id, at, name AS via, event_id, output_id
FROM {db}.journey_events
WHERE type = 'identity' AND name IN ('linked', 'merged');

INSERT INTO {db}.person_outputs (person_id, at, output_id, type, name, journey, journey_id, stage,
    channel, touchpoint, event_id, value, detail)
SELECT person_id, at, output_id, type, name, journey, journey_id, stage, channel, touchpoint,
    event_id, value, detail
FROM {db}.journey_events
WHERE person_id != '';

INSERT INTO {db}.person_outputs (person_id, at, output_id, type, name, journey, journey_id, stage,
    channel, touchpoint, event_id, value, detail)
SELECT person_id, at, output_id, type, name, journey, journey_id, stage, channel, touchpoint,
    event_id, value, detail
FROM {db}.experience_moments
WHERE person_id != '';

INSERT INTO {db}.touchpoints_by_identifier (identifier, occurred_at, event_id, identifiers,
    customer_id, channel, touchpoint, action, outcome, outcome_reason, session_hint, duration_ms,
    wait_ms, csat, nps, sentiment, revenue, currency, source)
SELECT identifier, occurred_at, event_id, keys AS identifiers, customer_id, channel, touchpoint,
    action, outcome, outcome_reason, session_hint, duration_ms, wait_ms, csat, nps, sentiment,
    revenue, currency, source
FROM (
    SELECT *, arrayFilter(k -> NOT endsWith(k, ':'), [
        concat('customer_id:', customer_id), concat('loyalty_id:', loyalty_id),
        concat('email_hash:', email_hash), concat('phone_hash:', phone_hash),
        concat('device_id:', device_id), concat('anonymous_id:', anonymous_id)]) AS keys
    FROM {db}.touchpoints
)
ARRAY JOIN keys AS identifier
