-- pg_reaper 0.4.1 -> 0.5.0: no catalog change (the lock keys read the lock manager anew, and
-- prepared transactions are named in a NOTICE). The update refuses to run while this session
-- has another library than the installed one loaded (install, restart the server, update).
\echo Use "ALTER EXTENSION pg_reaper UPDATE TO '0.5.0'" to load this file. \quit

-- The library this session runs must be the one installed. With pg_reaper in
-- shared_preload_libraries, every backend keeps the library the server loaded at start, whatever
-- files were installed since: creating or updating the extension then would leave the old library
-- serving the new SQL, and the old worker waiting for an update already done. (This block opens
-- every install and update script from 0.4.1 on.)
LOAD 'MODULE_PATHNAME';

DO $$
DECLARE
    loaded text := pg_catalog.current_setting('pg_reaper.library_version', true);
    installed text;
BEGIN
    -- pg_available_extensions reads every control file: one broken by another package must
    -- not stop this one, which then only refuses a library older than 0.4.1.
    BEGIN
        installed := (SELECT e.default_version FROM pg_catalog.pg_available_extensions e
                       WHERE e.name OPERATOR(pg_catalog.=) 'pg_reaper');
    EXCEPTION WHEN OTHERS THEN
        installed := loaded;
    END;
    IF loaded IS NULL OR loaded IS DISTINCT FROM installed THEN
        RAISE EXCEPTION 'pg_reaper: this session runs the pg_reaper library %, not the installed %',
                        coalesce(loaded, '0.4.0 or older'), installed
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'With pg_reaper in shared_preload_libraries, restart the server after installing a new version, then run the command again; otherwise run it in a new session.';
    END IF;
END
$$;
