-- relay-cdc confirms a position only after the rows before it are marked PROCESSED,
-- so that UPDATE is on its critical path. With `status` in a partial index's
-- predicate every such update had to write new index entries (no HOT update); the
-- columns it changes (status, processed_at) are now in no index, and pages keep room
-- for the new row version, so the update stays on its page.
drop index if exists outbox_pending_created_at;
create index outbox_created_at_id on outbox (created_at, id);
alter table outbox set (fillfactor = 80);
