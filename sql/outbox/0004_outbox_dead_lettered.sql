-- relay-cdc gives a row it sent to the dead-letter topic (a record Kafka can never take,
-- under kafka.poison = "dead-letter") the status DEAD_LETTERED: not PENDING, which a
-- reconciliation would publish again forever, and not PROCESSED, which would hide it.
-- processed_at records when the relay settled the row either way. Retention deletes
-- PROCESSED rows only, so dead-lettered ones stay until an operator handles them.
alter table outbox drop constraint outbox_status_check;
alter table outbox add constraint outbox_status_check
    check (status in ('PENDING', 'PROCESSED', 'DEAD_LETTERED'));
alter table outbox drop constraint outbox_check;
alter table outbox add constraint outbox_processed_at_check
    check ((status = 'PENDING') = (processed_at is null));
