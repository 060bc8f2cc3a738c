-- walcast column sequence mode: the per-key sequence is a column of the row, kept by
-- a trigger (insert: 1, update: old + 1). A refetch is then a plain SELECT, consistent
-- by construction. Load the functions once, then install per table:
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/sequence_column.sql
--   psql "$DATABASE_URL" -c "SELECT walcast_install_sequence('public.accounts')"
--   walcast run ... --column-sequence public.accounts=walcast_seq
--
-- walcast_install_sequence adds the column (bigint, default 1), sets REPLICA IDENTITY
-- FULL (a DELETE must carry the old row's sequence: the delete envelope carries
-- old + 1), and creates the BEFORE INSERT OR UPDATE trigger.
--
-- Note: a key that is deleted and inserted again starts over at 1; consumers treat a
-- `delete` envelope as the end of that key's sequence.

CREATE OR REPLACE FUNCTION walcast_sequence_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  col text := TG_ARGV[0];
  next bigint;
BEGIN
  IF TG_OP = 'INSERT' THEN
    next := 1;
  ELSE
    next := coalesce((to_jsonb(OLD) ->> col)::bigint, 0) + 1;
  END IF;
  NEW := jsonb_populate_record(NEW, jsonb_build_object(col, next));
  RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION walcast_install_sequence(tbl regclass, col text DEFAULT 'walcast_seq')
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE format('ALTER TABLE %s ADD COLUMN IF NOT EXISTS %I bigint NOT NULL DEFAULT 1', tbl, col);
  EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', tbl);
  EXECUTE format('DROP TRIGGER IF EXISTS walcast_sequence ON %s', tbl);
  EXECUTE format(
    'CREATE TRIGGER walcast_sequence BEFORE INSERT OR UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION walcast_sequence_trigger(%L)',
    tbl, col);
END
$$;
