-- Stored policies: the rules a DBA writes once and schedules (see README, "Policies").
CREATE TABLE reaper.policies (
    name       text        PRIMARY KEY,
    filter     jsonb       NOT NULL,
    action     text        NOT NULL DEFAULT 'terminate',
    timeout_ms bigint      NOT NULL DEFAULT 0,
    grace_ms   bigint      NOT NULL DEFAULT 0,
    enabled    boolean     NOT NULL DEFAULT true,
    -- A policy signals with its owner's privileges, whoever runs it. A role name, not a
    -- regrole: a policy replicated to a node that lacks the role must not stop replication.
    owner      text        NOT NULL DEFAULT CURRENT_USER,
    note       text,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- The background worker runs the policy this often; NULL: only run_policies() runs it.
    run_every  interval,
    -- Where the worker runs it, since the same rows reach every node of a replicated cluster.
    run_on     text        NOT NULL DEFAULT 'any',
    -- The circuit breaker: signals a minute before the policy trips; NULL: the setting's.
    max_signals_per_minute integer,
    -- This node's role that owner named when the row was written here (policies_owner_oid).
    owner_oid  oid
);
REVOKE ALL ON reaper.policies FROM PUBLIC;

-- Policies are configuration: pg_dump keeps their rows.
SELECT pg_catalog.pg_extension_config_dump('reaper.policies', '');

COMMENT ON TABLE reaper.policies IS
    'pg_reaper policies: run by the background worker (run_every) or reaper.run_policies(), each with its owner''s privileges';
COMMENT ON COLUMN reaper.policies.filter IS 'a pg_reaper filter (see reaper.validate_filter)';
COMMENT ON COLUMN reaper.policies.action IS 'terminate, cancel, cancel_then_terminate, or report (a dry run: reaper.log rows, no signal)';
COMMENT ON COLUMN reaper.policies.run_every IS
    'how often the pg_reaper background worker runs the policy (100 ms to 1 year); NULL: only reaper.run_policies() runs it';
COMMENT ON COLUMN reaper.policies.run_on IS
    'where the worker runs it: any, primary or standby';
COMMENT ON COLUMN reaper.policies.max_signals_per_minute IS
    'the circuit breaker: at most this many signals over a sliding minute, then the policy trips until the minute allows or reaper.reset_policy(name); NULL: pg_reaper.max_signals_per_minute; 0: no cap';
COMMENT ON COLUMN reaper.policies.owner IS
    'the role whose privileges the policy signals with (its name); only roles that may SET ROLE to it may write or run the policy';
COMMENT ON COLUMN reaper.policies.owner_oid IS
    'this node''s role that owner named when the row was written (kept by a trigger, whatever is written here); a policy whose owner names another role now (renamed, or dropped and created again) is refused';

-- Refuses what run_policies could not run, and owners the writer may not act for: "act for"
-- is what SET ROLE allows, which from PostgreSQL 16 on needs the SET option of the membership.
CREATE FUNCTION reaper.policies_check() RETURNS trigger
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

CREATE TRIGGER policies_check
    BEFORE INSERT OR UPDATE ON reaper.policies
    FOR EACH ROW EXECUTE FUNCTION reaper.policies_check();

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
