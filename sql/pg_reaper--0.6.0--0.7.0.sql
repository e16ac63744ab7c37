-- pg_reaper 0.6.0 -> 0.7.0 (in the making): metrics for Prometheus (reaper.metrics()), the
-- node's name (reaper.node(), pg_reaper.node_name) and reaper.log's key (node, id).
\echo Use "ALTER EXTENSION pg_reaper UPDATE TO '0.7.0'" to load this file. \quit

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

CREATE FUNCTION reaper."metrics"() RETURNS TABLE (
	"metric" TEXT,
	"policy" TEXT,
	"action" TEXT,
	"outcome" TEXT,
	"node" TEXT,
	"value" double precision
)
VOLATILE PARALLEL SAFE STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'metrics_wrapper';

CREATE FUNCTION reaper."node"() RETURNS TEXT
STABLE PARALLEL SAFE STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'node_wrapper';

COMMENT ON FUNCTION reaper.metrics() IS
    'One row per monitoring series: counters of signals, runs, failures and trips since reset_timestamp_seconds, and the worker''s gauges; labels policy, action, outcome, node ('''' where one does not apply)';
COMMENT ON FUNCTION reaper.node() IS
    'This node''s name in reaper.log and reaper.metrics(): pg_reaper.node_name, else cluster_name, else the system identifier';
REVOKE ALL ON FUNCTION reaper.metrics() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reaper.metrics() TO pg_monitor;

-- The rows already there were written by this node (its name as it is now); they are numbered
-- in the order the table holds them.
ALTER TABLE reaper.log ADD COLUMN node text NOT NULL DEFAULT reaper.node();
ALTER TABLE reaper.log ADD COLUMN id bigserial;
ALTER TABLE reaper.log ADD PRIMARY KEY (node, id);
SELECT pg_catalog.pg_extension_config_dump('reaper.log_id_seq', '');
COMMENT ON COLUMN reaper.log.node IS 'the node that wrote the row: pg_reaper.node_name, else cluster_name, else the system identifier (reaper.node())';
COMMENT ON COLUMN reaper.log.id IS 'the row''s number on its node';
