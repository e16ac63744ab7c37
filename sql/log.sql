-- Everyone may call the functions: they signal only what the caller could signal by hand.
-- The tables stay closed to PUBLIC; the DBA grants.
GRANT USAGE ON SCHEMA reaper TO PUBLIC;

-- The audit trail: one row per non-preview result row (GUC pg_reaper.audit). Written by
-- pg_reaper as the owner of this table, in the caller's transaction. A signal cannot be rolled
-- back; these rows can. The `pg_reaper:` server-log line is the record that always stays.
CREATE TABLE reaper.log (
    logged_at        timestamptz NOT NULL,
    caller           text        NOT NULL,
    run_as           text        NOT NULL,
    policy           text,
    action           text        NOT NULL,
    outcome          text        NOT NULL,
    pid              integer,
    backend_start    timestamptz,
    usename          text,
    datname          text,
    application_name text,
    client_addr      inet,
    backend_type     text,
    state            text,
    query            text,
    waited_ms        bigint,
    detail           text,
    -- Which node wrote the row, and its number there: unique across a fleet whose members'
    -- rows are gathered into one log by logical replication.
    node             text        NOT NULL DEFAULT reaper.node(),
    id               bigserial,
    PRIMARY KEY (node, id)
);
CREATE INDEX log_logged_at_idx ON reaper.log (logged_at);
-- "Who killed my session?" asks by pid.
CREATE INDEX log_pid_idx ON reaper.log (pid);
REVOKE ALL ON reaper.log FROM PUBLIC;

COMMENT ON TABLE reaper.log IS
    'pg_reaper audit trail: who signalled which backend, when, why and with what outcome';
COMMENT ON COLUMN reaper.log.caller IS 'the role that called the function';
COMMENT ON COLUMN reaper.log.run_as IS 'the role whose privileges signalled (a policy''s owner)';
COMMENT ON COLUMN reaper.log.policy IS 'the policy that acted; NULL for a direct call';
COMMENT ON COLUMN reaper.log.node IS 'the node that wrote the row: pg_reaper.node_name, else cluster_name, else the system identifier (reaper.node())';
COMMENT ON COLUMN reaper.log.id IS 'the row''s number on its node';

-- The trail outlives a dump and restore, and so do its numbers.
SELECT pg_catalog.pg_extension_config_dump('reaper.log', '');
SELECT pg_catalog.pg_extension_config_dump('reaper.log_id_seq', '');

-- A fleet gathers its members' logs into one by logical replication, keyed (node, id). Without
-- pg_reaper.node_name a node is named by cluster_name, which nodes often share (Debian's
-- '15/main', one Patroni scope), and two nodes' rows with one key stop the subscriber that
-- gathers them. So naming reaper.log in a publication needs the setting; a publication that
-- takes it along with every table (FOR ALL TABLES, a schema) is for something else, and gets
-- a WARNING. Only what the command added is looked at.
CREATE FUNCTION reaper.log_publication_check() RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    changed oid[];
    schemas oid[];
    named text;
    along text;
BEGIN
    IF coalesce(current_setting('pg_reaper.node_name', true), '') <> '' THEN
        RETURN;
    END IF;
    -- What this command added: a new publication whole; to an existing one, the tables and
    -- schemas it reports (a RENAME or an OWNER TO of a publication that has the log adds none).
    IF TG_TAG = 'CREATE PUBLICATION' THEN
        SELECT array_agg(c.objid) INTO changed
          FROM pg_event_trigger_ddl_commands() c
         WHERE c.classid = 'pg_publication'::regclass;
    END IF;
    -- FOR TABLES IN SCHEMA: PostgreSQL 15 and later.
    IF to_regclass('pg_catalog.pg_publication_namespace') IS NOT NULL THEN
        EXECUTE 'SELECT pg_catalog.array_agg(pn.pnpubid)
                   FROM pg_catalog.pg_event_trigger_ddl_commands() c
                   JOIN pg_catalog.pg_publication_namespace pn ON pn.oid OPERATOR(pg_catalog.=) c.objid
                  WHERE c.classid OPERATOR(pg_catalog.=) ''pg_catalog.pg_publication_namespace''::pg_catalog.regclass'
           INTO schemas;
        changed := changed || schemas;
    END IF;
    SELECT p.pubname INTO named
      FROM pg_publication p JOIN pg_publication_rel pr ON pr.prpubid = p.oid
     WHERE pr.prrelid = 'reaper.log'::regclass
       AND (p.oid = ANY (changed)
            OR pr.oid IN (SELECT c.objid FROM pg_event_trigger_ddl_commands() c
                           WHERE c.classid = 'pg_publication_rel'::regclass))
     LIMIT 1;
    IF named IS NOT NULL THEN
        RAISE EXCEPTION 'publication "%" would publish reaper.log while pg_reaper.node_name is not set', named
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('This node''s rows are named %L (its cluster_name or system identifier), which other nodes may share: rows of two nodes with the same (node, id) stop the subscription that gathers them.', reaper.node()),
                  HINT = 'Give this node a name no other node has: ALTER SYSTEM SET pg_reaper.node_name = ''...''; SELECT pg_reload_conf(); then publish again.';
    END IF;
    SELECT t.pubname INTO along
      FROM pg_publication_tables t JOIN pg_publication p ON p.pubname = t.pubname
     WHERE p.oid = ANY (changed) AND t.schemaname = 'reaper' AND t.tablename = 'log'
     LIMIT 1;
    IF along IS NOT NULL THEN
        RAISE WARNING 'publication "%" publishes reaper.log, and pg_reaper.node_name is not set', along
            USING DETAIL = format('This node''s rows are named %L: to gather them with other nodes'' rows into one log, give it a name no other node has first.', reaper.node());
    END IF;
END
$$;

CREATE EVENT TRIGGER reaper_log_publication_check ON ddl_command_end
    WHEN TAG IN ('CREATE PUBLICATION', 'ALTER PUBLICATION')
    EXECUTE FUNCTION reaper.log_publication_check();

CREATE FUNCTION reaper.purge_log(older_than interval) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    purged bigint;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must be a non-negative interval, got %', coalesce(older_than::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM reaper.log WHERE logged_at < now() - older_than;
    GET DIAGNOSTICS purged = ROW_COUNT;
    RETURN purged;
END
$$;
REVOKE ALL ON FUNCTION reaper.purge_log(interval) FROM PUBLIC;
COMMENT ON FUNCTION reaper.purge_log(interval) IS
    'Delete reaper.log rows older than the interval; returns how many (needs DELETE on reaper.log)';
