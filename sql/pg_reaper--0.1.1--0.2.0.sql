-- pg_reaper 0.1.1 -> 0.2.0: every supported PostgreSQL major (14 to 18).
\echo Use "ALTER EXTENSION pg_reaper UPDATE TO '0.2.0'" to load this file. \quit

-- An exact `state` or `backend_type` is now checked against the running server (its major's
-- states and process types, and the background workers running now), so the result of
-- validate_filter depends on the server it runs on.
ALTER FUNCTION reaper.validate_filter(jsonb) STABLE;

-- "May act as a policy's owner" is what SET ROLE allows: from PostgreSQL 16 on, that needs the
-- SET option of the membership.
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

COMMENT ON COLUMN reaper.policies.owner IS
    'the role whose privileges the policy signals with; only roles that may SET ROLE to it may write or run the policy';
