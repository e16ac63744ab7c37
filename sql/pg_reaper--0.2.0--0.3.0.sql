-- pg_reaper 0.2.0 -> 0.3.0: the background worker.
\echo Use "ALTER EXTENSION pg_reaper UPDATE TO '0.3.0'" to load this file. \quit

-- The worker runs a policy with a run_every on its schedule, where run_on says.
ALTER TABLE reaper.policies
    ADD COLUMN run_every interval,
    ADD COLUMN run_on    text NOT NULL DEFAULT 'any';

COMMENT ON TABLE reaper.policies IS
    'pg_reaper policies: run by the background worker (run_every) or reaper.run_policies(), each with its owner''s privileges';
COMMENT ON COLUMN reaper.policies.run_every IS
    'how often the pg_reaper background worker runs the policy (100 ms to 1 year); NULL: only reaper.run_policies() runs it';
COMMENT ON COLUMN reaper.policies.run_on IS
    'where the worker runs it: any, primary or standby';

CREATE OR REPLACE FUNCTION reaper.policies_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    act_as text := CASE WHEN current_setting('server_version_num')::int >= 160000
                        THEN 'SET' ELSE 'MEMBER' END;
BEGIN
    PERFORM reaper.validate_filter(NEW.filter);
    IF NEW.action NOT IN ('terminate', 'cancel', 'cancel_then_terminate') THEN
        RAISE EXCEPTION 'unknown policy action "%"', NEW.action
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use terminate, cancel or cancel_then_terminate.';
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
    IF NOT pg_has_role(current_user, NEW.owner, act_as) THEN
        RAISE EXCEPTION 'permission denied to write policy "%" owned by role %', NEW.name, NEW.owner
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A policy''s owner must be a role you may SET ROLE to.';
    END IF;
    IF TG_OP = 'UPDATE'
       AND EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = OLD.owner)
       AND NOT pg_has_role(current_user, OLD.owner, act_as) THEN
        RAISE EXCEPTION 'permission denied to change policy "%" owned by role %', OLD.name, OLD.owner
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

-- What the worker knows, from shared memory.
CREATE FUNCTION reaper."worker_status"() RETURNS TABLE (
	"policy" TEXT,
	"run_on" TEXT,
	"run_every" interval,
	"last_run_at" timestamp with time zone,
	"last_duration_ms" double precision,
	"runs" bigint,
	"signalled" bigint,
	"last_outcomes" jsonb,
	"last_error" TEXT,
	"next_run_at" timestamp with time zone
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'worker_status_wrapper';

CREATE FUNCTION reaper."worker"() RETURNS TABLE (
	"pid" INT,
	"state" TEXT,
	"database" TEXT,
	"started_at" timestamp with time zone,
	"cycles" bigint,
	"message" TEXT
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'worker_wrapper';

COMMENT ON FUNCTION reaper.run_policies() IS
    'Run every enabled policy of reaper.policies without a run_every, in name order, each with its owner''s privileges';
COMMENT ON FUNCTION reaper.run_policy(text) IS
    'Run one policy of reaper.policies, scheduled or not, with its owner''s privileges';
COMMENT ON FUNCTION reaper.worker_status() IS
    'One row per policy the pg_reaper background worker schedules: where and how often it runs, its last run, its next';
COMMENT ON FUNCTION reaper.worker() IS
    'The pg_reaper background worker: its pid, what it is doing, and why it waits if it does';

-- The worker's status names the policies and their errors, which reaper.policies keeps from
-- PUBLIC: for monitoring roles.
REVOKE ALL ON FUNCTION reaper.worker_status() FROM PUBLIC;
REVOKE ALL ON FUNCTION reaper.worker() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reaper.worker_status() TO pg_monitor;
GRANT EXECUTE ON FUNCTION reaper.worker() TO pg_monitor;
