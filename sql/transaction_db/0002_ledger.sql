-- transaction-service's ledger: accounts (opened from UserCreated events), transactions
-- (created PENDING over HTTP, settled from TransactionCreated events), the idempotency
-- keys of POST /api/v1/transactions, and the inbox of consumed event ids.
--
-- Money is NUMERIC(20,2): exact, two fraction digits, never a float.

create table accounts (
    user_id    uuid primary key,                 -- the user's id from UserCreated
    balance    numeric(20, 2) not null default 0 check (balance >= 0),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create table transactions (
    id             uuid primary key,             -- UUIDv7, also the outbox aggregate_id
    status         text not null default 'PENDING'
                   check (status in ('PENDING', 'COMPLETED', 'FAILED')),
    amount         numeric(20, 2) not null check (amount > 0),
    from_user_id   uuid references accounts (user_id),  -- null: a deposit from outside
    to_user_id     uuid not null references accounts (user_id),
    description    text check (char_length(description) <= 255),
    failure_reason text,
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now(),
    check (from_user_id is null or from_user_id <> to_user_id),
    check ((status = 'FAILED') = (failure_reason is not null))
);

create index transactions_from_user_id on transactions (from_user_id);
create index transactions_to_user_id on transactions (to_user_id);

-- One row per Idempotency-Key, written in the same transaction as the transaction it
-- created, so a concurrent request with the same key waits on the primary key and then
-- sees the committed response. Kept at least 24 hours; older rows are purged
-- opportunistically by the service.
create table idempotency_keys (
    key             text primary key check (char_length(key) between 1 and 255),
    request_hash    bytea not null,              -- sha256 of the canonical request
    response_status smallint not null,
    response_body   text not null,               -- the JSON body byte for byte
    created_at      timestamptz not null default now()
);

create index idempotency_keys_created_at on idempotency_keys (created_at);

-- Every consumed event id, inserted in the same transaction as the event's effects:
-- a redelivered event finds its id here and changes nothing.
create table inbox (
    event_id     uuid primary key,
    event_type   text not null,
    processed_at timestamptz not null default now()
);
