-- relay-cdc's rights on one database's outbox, after its service created it (migrations).
-- Run in that database as its owner or a superuser:
--
--   psql -d users_db -f sql/grants.sql
--
-- What each right is for (relay-cdc check names any that is missing):
--   select            reconciliation: rows left PENDING when a slot is created; the marker's lookups
--   update (status, processed_at)   marking rows PROCESSED / DEAD_LETTERED after Kafka acked them
--   delete            retention (pipeline.retention_seconds), if used
-- Nothing on the services' other tables (users, password hashes, balances): the relay
-- reads the outbox and nothing else. The publication outbox_pub belongs to the service
-- (created by its migration); the relay needs no right on it to stream it.

select format('grant connect on database %I to relay_cdc', current_database())
\gexec
grant usage on schema public to relay_cdc;
grant select, delete on table public.outbox to relay_cdc;
grant update (status, processed_at) on table public.outbox to relay_cdc;
