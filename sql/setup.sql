-- walcast setup, run once by a DBA (a superuser, or the tables' owner with CREATEROLE):
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 \
--        -v walcast_password="'choose-a-secret'" \
--        -v tables='public.users, public.orders' \
--        -f sql/setup.sql
--
-- It creates a least-privilege role (REPLICATION + SELECT on the published tables
-- only: SELECT is needed for the rare fetch of an unchanged TOAST value), and the
-- publication walcast streams. The slot is created by walcast itself at first start.
-- Requirements on the server (postgresql.conf, restart needed):
--   wal_level = logical, max_replication_slots >= 1 free, max_wal_senders >= 1 free.

\set ON_ERROR_STOP on

CREATE ROLE walcast WITH LOGIN REPLICATION PASSWORD :walcast_password;

CREATE PUBLICATION walcast FOR TABLE :tables;

GRANT SELECT ON TABLE :tables TO walcast;

-- Every published table needs a primary key (walcast keys envelopes by it) or a
-- REPLICA IDENTITY USING INDEX on a unique index. Tables with large (TOASTed) columns
-- should use REPLICA IDENTITY FULL, so an UPDATE that leaves a large value unchanged
-- still carries it exactly:
--   ALTER TABLE public.documents REPLICA IDENTITY FULL;
