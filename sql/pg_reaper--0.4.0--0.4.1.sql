-- pg_reaper 0.4.0 -> 0.4.1: no catalog change. The update refuses to run while this backend has
-- an older library loaded: with pg_reaper in shared_preload_libraries, every backend keeps the
-- library the server loaded at start, and the old worker would then wait for an update that
-- was already done. Install the new files, restart the server, then update.
\echo Use "ALTER EXTENSION pg_reaper UPDATE TO '0.4.1'" to load this file. \quit

-- The library this backend would use: the one already loaded (preloaded, or by an earlier call
-- in this session), else the new file.
LOAD 'MODULE_PATHNAME';

DO $$
DECLARE
    loaded text := pg_catalog.current_setting('pg_reaper.library_version', true);
BEGIN
    IF loaded IS NULL
       OR pg_catalog.string_to_array(loaded, '.')::pg_catalog.int4[]
          OPERATOR(pg_catalog.<) '{0,4,1}'::pg_catalog.int4[] THEN
        RAISE EXCEPTION 'pg_reaper: this session runs the pg_reaper library %, older than 0.4.1',
                        coalesce(loaded, '0.4.0 or older')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'With pg_reaper in shared_preload_libraries, restart the server after installing the new version, then run ALTER EXTENSION pg_reaper UPDATE; otherwise run it in a new session.';
    END IF;
END
$$;
