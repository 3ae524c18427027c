-- The trace context and extra headers of an event, written in the same transaction as
-- the row. relay-cdc copies them to the Kafka record: `traceparent` and `tracestate`
-- (W3C Trace Context) become headers of those names, and each entry of `headers` (a
-- JSON object of strings) a header of its own. All three are optional. The checks keep
-- what a writer stores to what the relay can publish as written; the names relay-cdc
-- sets itself are reserved.
alter table outbox
    add column traceparent text
        check (traceparent ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
               and traceparent !~ '^ff-'
               and traceparent !~ '^[0-9a-f]{2}-0{32}-'
               and traceparent !~ '-0{16}-[0-9a-f]{2}$'),
    add column tracestate text
        check (length(tracestate) <= 512 and tracestate ~ '^[ -~]*$'),
    add column headers jsonb
        check (jsonb_typeof(headers) = 'object'
               and not jsonb_path_exists(headers, '$.* ? (@.type() != "string")')
               and not headers ?| array['event_id', 'event_type', 'aggregate_type', 'aggregate_id',
                                        'source', 'commit_lsn', 'commit_time', 'error',
                                        'traceparent', 'tracestate']);
