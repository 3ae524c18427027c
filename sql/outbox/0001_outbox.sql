-- The transactional outbox of each service's database. A service writes one row here in the same
-- transaction as the state change it describes; relay-cdc reads the inserts from the
-- logical replication slot and publishes them to Kafka, then marks them PROCESSED.
create table outbox (
    id             uuid primary key,                -- the event id (UUIDv7): stable across re-sends
    aggregate_type text not null check (aggregate_type ~ '^[A-Za-z0-9._-]{1,200}$'),
    aggregate_id   text not null check (length(aggregate_id) between 1 and 255),
    event_type     text not null check (length(event_type) between 1 and 255),
    payload        jsonb not null,
    status         text not null default 'PENDING' check (status in ('PENDING', 'PROCESSED')),
    created_at     timestamptz not null default now(),
    processed_at   timestamptz,
    check ((status = 'PROCESSED') = (processed_at is not null))
);

-- Reconciliation and retention scan PENDING rows by age; PROCESSED rows need no index.
create index outbox_pending_created_at on outbox (created_at) where status = 'PENDING';

-- Inserts only: marking rows PROCESSED (an update) and retention (deletes) never reach
-- the relay, so they cannot echo back as events.
create publication outbox_pub for table outbox with (publish = 'insert');
