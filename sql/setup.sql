-- walcast setup, run once by a DBA (a superuser, or the tables' owner with CREATEROLE):
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 \
--        -v tables='public.users, public.orders' \
--        -f sql/setup.sql
--   psql "$DATABASE_URL" -c '\password walcast'    # psql asks: no password on a command line
--
-- psql variables:
--   tables            (required) the tables to publish, `schema.table`, comma-separated
--   role              the role walcast logs in as (default walcast)
--   publication       the publication walcast streams (default walcast: its --publication)
--   walcast_password  (optional) the role's password as a quoted literal
--                     (-v walcast_password="'...'"), for scripts that cannot answer a
--                     prompt; `ps` shows a command line, so prefer \password (or
--                     authentication without a password: cert, peer)
--
-- It refuses, before creating anything, a table without a primary key (or REPLICA
-- IDENTITY USING INDEX on a unique index): walcast keys every envelope by it, and once
-- such a table is published PostgreSQL refuses its UPDATEs and DELETEs ("cannot
-- update table ... because it does not have a replica identity and publishes
-- updates"). Then it creates a least-privilege role (REPLICATION + SELECT on the
-- published tables only: SELECT serves the snapshot of existing rows and reads of
-- unchanged TOAST values; the partitions of a partitioned table are granted too, as
-- they are published one by one), and the publication. walcast creates its slot at
-- first start. Requirements on the server (postgresql.conf, restart needed):
--   wal_level = logical, max_replication_slots >= 1 free, max_wal_senders >= 1 free.

\set ON_ERROR_STOP on

\if :{?role}
\else
\set role walcast
\endif
\if :{?publication}
\else
\set publication walcast
\endif
\if :{?tables}
\else
DO $$ BEGIN
  RAISE EXCEPTION 'sql/setup.sql: name the tables to publish: -v tables=''public.users, public.orders''';
END $$;
\endif

-- The DO blocks below read the variables from settings (psql does not interpolate
-- inside them).
SET walcast.setup_tables = :'tables';
SET walcast.setup_role = :'role';

DO $$
DECLARE
  listed text[] := ARRAY(SELECT trim(t) FROM unnest(string_to_array(current_setting('walcast.setup_tables'), ',')) AS t);
  missing text;
  keyless text;
BEGIN
  SELECT string_agg(t, ', ') INTO missing FROM unnest(listed) AS t WHERE to_regclass(t) IS NULL;
  IF missing IS NOT NULL THEN
    RAISE EXCEPTION 'sql/setup.sql: no table %', missing;
  END IF;
  SELECT string_agg(t, ', ') INTO keyless
  FROM unnest(listed) AS t JOIN pg_class c ON c.oid = to_regclass(t)
  WHERE c.relreplident = 'n'
     OR NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid
                    AND (i.indisprimary OR (c.relreplident = 'i' AND i.indisreplident)));
  IF keyless IS NOT NULL THEN
    RAISE EXCEPTION 'sql/setup.sql: % cannot be published: no primary key or replica identity index (walcast keys every envelope by it, and PostgreSQL would refuse the table''s own UPDATEs and DELETEs once it is published); nothing was created', keyless
      USING HINT = 'ALTER TABLE ... ADD PRIMARY KEY (...), or ALTER TABLE ... REPLICA IDENTITY USING INDEX <unique index>; or leave the table out of -v tables';
  END IF;
END $$;

CREATE ROLE :"role" WITH LOGIN REPLICATION;
\if :{?walcast_password}
ALTER ROLE :"role" PASSWORD :walcast_password;
\else
\echo 'Role' :role 'has no password yet: set one in psql with  \\password' :role '(psql asks for it: no password on a command line).'
\endif

CREATE PUBLICATION :"publication" FOR TABLE :tables;

GRANT SELECT ON TABLE :tables TO :"role";

-- The partitions of a partitioned table (by default changes are published per
-- partition, under the partition's name). A partition added later needs its own
-- GRANT SELECT.
DO $$
DECLARE
  part regclass;
BEGIN
  FOR part IN
    SELECT p.relid
    FROM unnest(string_to_array(current_setting('walcast.setup_tables'), ',')) AS t,
         pg_partition_tree(to_regclass(trim(t))) AS p
    WHERE p.level > 0
  LOOP
    EXECUTE format('GRANT SELECT ON TABLE %s TO %I', part, current_setting('walcast.setup_role'));
  END LOOP;
END $$;

RESET walcast.setup_tables;
RESET walcast.setup_role;

-- Tables with large (TOASTed) columns need nothing more: walcast reads an unchanged
-- large value it has not seen exactly, in batches (README, "First touch"). REPLICA
-- IDENTITY FULL would carry it in the WAL instead, at the cost of the whole old row
-- written to the WAL for every UPDATE and DELETE.
