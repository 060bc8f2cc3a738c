-- walcast teardown: stop walcast first, then run as a superuser:
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/teardown.sql
--
-- A forgotten replication slot retains WAL forever and can fill the disk: this drops
-- the slot (it must not be in use), the publication, and the role.

\set ON_ERROR_STOP on

SELECT pg_drop_replication_slot(slot_name)
FROM pg_replication_slots
WHERE slot_name = 'walcast' AND NOT active;

DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = 'walcast') THEN
    RAISE EXCEPTION 'slot walcast is still active: stop walcast first';
  END IF;
END $$;

DROP PUBLICATION IF EXISTS walcast;

DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'walcast') THEN
    EXECUTE 'REASSIGN OWNED BY walcast TO ' || quote_ident(current_user);
    EXECUTE 'DROP OWNED BY walcast';
    DROP ROLE walcast;
  END IF;
END $$;
