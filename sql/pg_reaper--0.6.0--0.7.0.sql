-- pg_reaper 0.6.0 -> 0.7.0 (in the making): metrics for Prometheus (reaper.metrics()), the
-- node's name (reaper.node(), pg_reaper.node_name) and reaper.log's key (node, id), policies'
-- owners by name (they replicate), no local writes to replicated policies.
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

-- Owners by name: a regrole's text form is read back through regrolein, which fails for a role
-- the node lacks (on a replica of the policies, an error that stops replication). A dangling
-- oid (its role dropped; regrole shows it as a bare number, a role name never) stays that
-- number, a name no role has: the policy stays refused, as it was.
-- owner_oid: the role each row was written for, which the regrole held. Set by a rewrite, not
-- an UPDATE, which would run the table's triggers (a filter this major refuses would stop it).
ALTER TABLE reaper.policies ADD COLUMN owner_oid oid;
ALTER TABLE reaper.policies ALTER COLUMN owner_oid TYPE oid USING owner::pg_catalog.oid;
ALTER TABLE reaper.policies ALTER COLUMN owner DROP DEFAULT;
ALTER TABLE reaper.policies ALTER COLUMN owner TYPE text
    USING CASE WHEN owner::pg_catalog.text OPERATOR(pg_catalog.~) '^[0-9]+$'
               THEN owner::pg_catalog.text
               ELSE pg_catalog.pg_get_userbyid(owner::pg_catalog.oid)::pg_catalog.text END;
ALTER TABLE reaper.policies ALTER COLUMN owner SET DEFAULT CURRENT_USER;
COMMENT ON COLUMN reaper.policies.owner IS
    'the role whose privileges the policy signals with (its name); only roles that may SET ROLE to it may write or run the policy';
COMMENT ON COLUMN reaper.policies.owner_oid IS
    'this node''s role that owner named when the row was written (kept by a trigger, whatever is written here); a policy whose owner names another role now (renamed, or dropped and created again) is refused';

CREATE OR REPLACE FUNCTION reaper.policies_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    act_as text := CASE WHEN current_setting('server_version_num')::int >= 160000
                        THEN 'SET' ELSE 'MEMBER' END;
    old_role oid;
BEGIN
    PERFORM reaper.validate_filter(NEW.filter);
    IF NEW.action NOT IN ('terminate', 'cancel', 'cancel_then_terminate', 'report') THEN
        RAISE EXCEPTION 'unknown policy action "%"', NEW.action
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use terminate, cancel, cancel_then_terminate, or report for a dry run.';
    END IF;
    IF NEW.max_signals_per_minute < 0 THEN
        RAISE EXCEPTION 'policy "%": max_signals_per_minute must not be negative, got %', NEW.name, NEW.max_signals_per_minute
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'NULL takes pg_reaper.max_signals_per_minute; 0 means no cap.';
    END IF;
    IF NEW.timeout_ms < 0 OR NEW.grace_ms < 0 THEN
        RAISE EXCEPTION 'policy "%": timeout_ms and grace_ms must not be negative', NEW.name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- isfinite: 17 has infinite intervals.
    IF NEW.run_every < interval '100 milliseconds' OR NEW.run_every > interval '1 year'
       OR NOT isfinite(NEW.run_every) THEN
        RAISE EXCEPTION 'policy "%": run_every must be from 100 milliseconds to 1 year, not %', NEW.name, NEW.run_every
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NEW.run_on NOT IN ('any', 'primary', 'standby') THEN
        RAISE EXCEPTION 'policy "%": unknown run_on "%"', NEW.name, NEW.run_on
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use any, primary or standby.';
    END IF;
    -- Who changes a policy must be able to act for the role it belongs to here: the one it
    -- was written for (owner_oid; renamed, it still is that role), else the one its name gives.
    IF TG_OP = 'UPDATE' THEN
        old_role := coalesce((SELECT r.oid FROM pg_roles r WHERE r.oid = OLD.owner_oid),
                             to_regrole(quote_ident(NULLIF(OLD.owner, '')))::oid);
        IF old_role IS NOT NULL AND NOT pg_has_role(current_user, old_role, act_as) THEN
            RAISE EXCEPTION 'permission denied to change policy "%" owned by role %', OLD.name, pg_get_userbyid(old_role)
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;
    -- A name in double quotes is how a 0.6.0 control's rows name a role (regrole's output),
    -- which members take apart (policies_owner_oid): no role name of that form is accepted.
    IF NEW.owner ~ '^".*"$' THEN
        RAISE EXCEPTION 'policy "%": owner % is in double quotes; name the role as it is, without them', NEW.name, NEW.owner
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF to_regrole(quote_ident(NULLIF(NEW.owner, ''))) IS NULL THEN
        -- A policy whose owner is gone may still be disabled (or deleted, or given an owner
        -- its writer may act for); nothing else changes while its owner is missing.
        IF TG_OP = 'UPDATE' AND NOT NEW.enabled
           AND to_jsonb(NEW) - 'enabled' - 'owner_oid' = to_jsonb(OLD) - 'enabled' - 'owner_oid' THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'policy "%": its owner, role "%", does not exist', NEW.name, NEW.owner
            USING ERRCODE = 'undefined_object',
                  HINT = 'Name a role you may SET ROLE to; a policy whose owner is gone can still be disabled or deleted.';
    END IF;
    IF NOT pg_has_role(current_user, NEW.owner, act_as) THEN
        RAISE EXCEPTION 'permission denied to write policy "%" owned by role %', NEW.name, NEW.owner
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A policy''s owner must be a role you may SET ROLE to.';
    END IF;
    RETURN NEW;
END
$$;

-- The role a policy's owner names, fixed when the row is written here: a later rename, or a
-- role dropped and created again under the name, then refuses the policy instead of handing it
-- to whoever has the name now. Kept while the owner's name stays the same; resolved again when
-- it changes, when it named no role before, or when a writer sets owner_oid to NULL (which says
-- "the role of that name now"). ENABLE ALWAYS: it fires for the rows logical replication
-- applies too, with this node's roles; any other owner_oid a row brings is ignored.
CREATE FUNCTION reaper.policies_owner_oid() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- A 0.6.0 control (owner a regrole) sends the role as regrole writes it, quoted where the
    -- name needs it ("App-Ops"): the name itself is kept. Only for rows replication applies
    -- (session_replication_role is a superuser's to set): a local writer could otherwise name
    -- a role '"postgres"' of their own making and have the row given to postgres.
    -- The exact form regrole writes, and only that; policies_check refuses such names from
    -- any other writer, so a 0.7.0 control never sends one.
    IF current_setting('session_replication_role') = 'replica'
       AND length(NEW.owner) > 1 AND left(NEW.owner, 1) = '"' AND right(NEW.owner, 1) = '"'
       AND quote_ident(replace(substr(NEW.owner, 2, length(NEW.owner) - 2), '""', '"')) = NEW.owner THEN
        NEW.owner := replace(substr(NEW.owner, 2, length(NEW.owner) - 2), '""', '"');
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.owner IS NOT DISTINCT FROM OLD.owner AND OLD.owner_oid IS NOT NULL
       AND NEW.owner_oid IS NOT NULL THEN
        NEW.owner_oid := OLD.owner_oid;
    ELSE
        NEW.owner_oid := to_regrole(quote_ident(NULLIF(NEW.owner, '')));
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER policies_owner_oid
    BEFORE INSERT OR UPDATE ON reaper.policies
    FOR EACH ROW EXECUTE FUNCTION reaper.policies_owner_oid();
ALTER TABLE reaper.policies ENABLE ALWAYS TRIGGER policies_owner_oid;

-- On a member of a fleet, reaper.policies is a copy of the control cluster's, by logical
-- replication: a local write would diverge from it, and a local INSERT of a name the control
-- inserts later would stop replication with a duplicate key. Refused; the apply worker writes
-- as session_replication_role = replica, where this trigger does not fire.
CREATE FUNCTION reaper.policies_not_replicated() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    subscription text;
BEGIN
    SELECT s.subname INTO subscription
      FROM pg_subscription_rel sr JOIN pg_subscription s ON s.oid = sr.srsubid
     WHERE sr.srrelid = 'reaper.policies'::regclass
     LIMIT 1;
    IF subscription IS NOT NULL THEN
        RAISE EXCEPTION 'reaper.policies is replicated here from a control cluster (subscription "%"): change the policies there', subscription
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'To make this node''s policies its own again: ALTER PUBLICATION on the control, or DROP SUBSCRIPTION here. A superuser may still write here with SET session_replication_role = replica (to empty the table before a copy starts over, say).';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER policies_not_replicated
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON reaper.policies
    FOR EACH STATEMENT EXECUTE FUNCTION reaper.policies_not_replicated();
