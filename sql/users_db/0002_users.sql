-- user-service's accounts. The service stores the email already normalised (trimmed,
-- lower-case); the unique index on lower(email) keeps two spellings of one address out
-- even if a row is ever written by something else.
create table users (
    id            uuid primary key,             -- UUIDv7, chosen by the service
    email         text not null check (length(email) between 3 and 254),
    password_hash text not null,                -- argon2id PHC string; never leaves the database
    created_at    timestamptz not null default now()
);

create unique index users_email_lower_key on users (lower(email));
