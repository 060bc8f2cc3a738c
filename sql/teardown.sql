-- walcast teardown: stop walcast first, then run as a superuser:
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/teardown.sql
--
-- psql variables (as given to sql/setup.sql and walcast): role, publication and slot,
-- each `walcast` by default.
--
-- A forgotten replication slot retains WAL forever and can fill the disk: this drops
-- the slot (it must not be in use), the publication, and the role. walcast's JetStream
-- streams stay: `walcast teardown` removes them (and the slot and, with
-- --drop-publication, the publication).

\set ON_ERROR_STOP on

\if :{?role}
\else
\set role walcast
\endif
\if :{?publication}
\else
\set publication walcast
\endif
\if :{?slot}
\else
\set slot walcast
\endif

SELECT pg_drop_replication_slot(slot_name)
FROM pg_replication_slots
WHERE slot_name = :'slot' AND NOT active;

-- The DO blocks read the variables from settings (psql does not interpolate there).
SET walcast.teardown_slot = :'slot';
SET walcast.teardown_role = :'role';

DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = current_setting('walcast.teardown_slot')) THEN
    RAISE EXCEPTION 'slot % is still active: stop walcast first', current_setting('walcast.teardown_slot');
  END IF;
END $$;

DROP PUBLICATION IF EXISTS :"publication";

DO $$
DECLARE
  r text := current_setting('walcast.teardown_role');
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
    EXECUTE format('REASSIGN OWNED BY %I TO %I', r, current_user);
    EXECUTE format('DROP OWNED BY %I', r);
    EXECUTE format('DROP ROLE %I', r);
  END IF;
END $$;

RESET walcast.teardown_slot;
RESET walcast.teardown_role;
