-- pg_reaper 0.5.0 -> 0.6.0: the victim learns why (no catalog change: shared memory and a
-- setting), the holding_up filter key (the filter language only), and the safety valves: the
-- action 'report', the circuit breaker (policies.max_signals_per_minute, worker_status's
-- tripped_until, reaper.reset_policy) and NOTIFY pg_reaper.
\echo Use "ALTER EXTENSION pg_reaper UPDATE TO '0.6.0'" to load this file. \quit

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

ALTER TABLE reaper.policies ADD COLUMN max_signals_per_minute integer;
COMMENT ON COLUMN reaper.policies.max_signals_per_minute IS
    'the circuit breaker: at most this many signals over a sliding minute, then the policy trips until the minute allows or reaper.reset_policy(name); NULL: pg_reaper.max_signals_per_minute; 0: no cap';
COMMENT ON COLUMN reaper.policies.action IS 'terminate, cancel, cancel_then_terminate, or report (a dry run: reaper.log rows, no signal)';

CREATE OR REPLACE FUNCTION reaper.policies_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    act_as text := CASE WHEN current_setting('server_version_num')::int >= 160000
                        THEN 'SET' ELSE 'MEMBER' END;
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


-- worker_status() gains a column: a function's result type cannot change in place.
DROP FUNCTION reaper.worker_status();
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
	"next_run_at" timestamp with time zone,
	"tripped_until" timestamp with time zone
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'worker_status_wrapper';
COMMENT ON FUNCTION reaper.worker_status() IS
    'One row per policy the pg_reaper background worker schedules: where and how often it runs, its last run, its next, and until when its circuit breaker is tripped';
REVOKE ALL ON FUNCTION reaper.worker_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reaper.worker_status() TO pg_monitor;

CREATE FUNCTION reaper."reset_policy"(
	"name" TEXT
) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'reset_policy_wrapper';
COMMENT ON FUNCTION reaper.reset_policy(text) IS
    'Reset a policy''s circuit breaker (max_signals_per_minute) so that it signals again at once; true if it was tripped (needs UPDATE on reaper.policies and the right to act as its owner)';
