-- relay-cdc marks rows PROCESSED in batches of consecutive rows (commit order, and the
-- services' ids are UUIDv7, so insertion order): one UPDATE rewrites every row of a page
-- in one transaction. At fillfactor 80 only a quarter of those new row versions fit on
-- their page; the rest left it, with new entries in both indexes (no HOT update).
-- scripts/bench-marking, 2 cores, time-ordered ids: fillfactor 80 gave 25 % HOT updates,
-- 0.90 CPU-s and 43 MiB of WAL per 100k rows marked; fillfactor 50 gives 100 % HOT,
-- 0.34 CPU-s and 24 MiB. The price: the table takes ~65 % more pages (each keeps room for
-- a second version of all its rows). Pages written before this migration keep their
-- fill until rewritten (VACUUM FULL, or pg_repack online).
alter table outbox set (fillfactor = 50);
