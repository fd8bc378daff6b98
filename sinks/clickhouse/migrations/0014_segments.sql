-- Segments (pipeline/segment_rules.py, docs/segments.md): every output about a journey carries
-- its journey's segment in detail.segment (the segment of the touchpoint that started it, one
-- of the journeys file's segments:), and the live page, the journey map and analysts filter by
-- it. Stored as a column computed when a row is written ("other" when the journey is in no
-- segment, and for outputs about no journey); rows written before read it computed from their
-- detail, which holds none: "other". The names are the journeys file's (at most 20) and
-- "other": a low-cardinality column.
ALTER TABLE {db}.journey_events
    ADD COLUMN IF NOT EXISTS segment LowCardinality(String)
    MATERIALIZED if(JSONExtractString(detail, 'segment') = '', 'other', JSONExtractString(detail, 'segment'));

ALTER TABLE {db}.experience_moments
    ADD COLUMN IF NOT EXISTS segment LowCardinality(String)
    MATERIALIZED if(JSONExtractString(detail, 'segment') = '', 'other', JSONExtractString(detail, 'segment'));
