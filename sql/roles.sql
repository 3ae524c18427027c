-- The least-privilege roles of the outbox system. Run once per PostgreSQL cluster as a
-- superuser (or a role with CREATEROLE), with the passwords as psql variables:
--
--   psql -v relay_password=... -v users_password=... -v transaction_password=... -f sql/roles.sql
--
-- then make each service's role the owner of its database, before the service first starts
-- (it creates its schema, the outbox table and the publication `outbox_pub` there):
--
--   alter database users_db owner to users_service;
--   alter database transaction_db owner to transaction_service;
--
-- and, once the services have migrated their databases, give relay-cdc its rights on each
-- outbox with sql/grants.sql (run in each database). `scripts/stack` does all of this when
-- STACK_SECURITY=tls. Running it again only resets the passwords.
--
-- Managed PostgreSQL: Amazon RDS/Aurora has no REPLICATION attribute to give; grant the
-- role `rds_replication` to relay_cdc instead (and set rds.logical_replication = 1). Cloud
-- SQL: `alter user relay_cdc with replication` as cloudsqlsuperuser (cloudsql.logical_decoding
-- = on). Azure Flexible Server: `alter role relay_cdc with replication` as the admin
-- (wal_level = logical). Supabase/Neon: the project's postgres role may grant REPLICATION.

select format('create role %I', r)
from (values ('relay_cdc'), ('users_service'), ('transaction_service')) as wanted(r)
where not exists (select from pg_roles where rolname = r)
\gexec

-- relay-cdc: logs in and streams logical replication (REPLICATION: create, read, advance
-- and drop its slot); no superuser, no CREATEDB, no CREATEROLE, no BYPASSRLS. Its table
-- rights come per database from sql/grants.sql.
alter role relay_cdc with login replication nosuperuser nocreatedb nocreaterole nobypassrls
    password :'relay_password';

-- Each service owns its database's schema (through owning the database: PostgreSQL 15+
-- gives the database owner the public schema) and nothing else: no replication.
alter role users_service with login noreplication nosuperuser nocreatedb nocreaterole nobypassrls
    password :'users_password';
alter role transaction_service with login noreplication nosuperuser nocreatedb nocreaterole nobypassrls
    password :'transaction_password';
