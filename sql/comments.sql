-- What \df+ and \dt+ tell a DBA.
COMMENT ON FUNCTION reaper.preview_matching(jsonb) IS
    'The backends a pg_reaper filter selects, one row each; signals nothing';
COMMENT ON FUNCTION reaper.cancel_matching(jsonb) IS
    'pg_cancel_backend for every backend the filter selects; one row per backend with its outcome';
COMMENT ON FUNCTION reaper.terminate_matching(jsonb, bigint) IS
    'pg_terminate_backend for every backend the filter selects; with timeout_ms > 0, confirms their exit against one deadline';
COMMENT ON FUNCTION reaper.cancel_then_terminate(jsonb, bigint, bigint) IS
    'Cancel every match, wait up to grace_ms for them to stop matching, terminate those that still match';
COMMENT ON FUNCTION reaper.validate_filter(jsonb) IS
    'The normalized filter, or the 22023 error the signalling functions would raise for it';
COMMENT ON FUNCTION reaper.run_policies() IS
    'Run every enabled policy of reaper.policies without a run_every, in name order, each with its owner''s privileges';
COMMENT ON FUNCTION reaper.run_policy(text) IS
    'Run one policy of reaper.policies, scheduled or not, with its owner''s privileges';
COMMENT ON FUNCTION reaper.worker_status() IS
    'One row per policy the pg_reaper background worker schedules: where and how often it runs, its last run, its next, and until when its circuit breaker is tripped';
COMMENT ON FUNCTION reaper.test_filter(jsonb, jsonb, timestamp with time zone) IS
    'The filter against saved pg_stat_activity rows (jsonb_agg of the view, with blocking_pids and waitstart for lock keys): which it would select; signals nothing';
COMMENT ON FUNCTION reaper.reset_policy(text) IS
    'Reset a policy''s circuit breaker (max_signals_per_minute) so that it signals again at once; true if it was tripped (needs UPDATE on reaper.policies and the right to act as its owner)';
COMMENT ON FUNCTION reaper.worker() IS
    'The pg_reaper background worker: its pid, what it is doing, and why it waits if it does';

-- The worker's status names the policies and their errors, which reaper.policies keeps from
-- PUBLIC: for monitoring roles.
REVOKE ALL ON FUNCTION reaper.worker_status() FROM PUBLIC;
REVOKE ALL ON FUNCTION reaper.worker() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reaper.worker_status() TO pg_monitor;
GRANT EXECUTE ON FUNCTION reaper.worker() TO pg_monitor;

COMMENT ON FUNCTION reaper.metrics() IS
    'One row per monitoring series: counters of signals, runs, failures and trips since reset_timestamp_seconds, and the worker''s gauges; labels policy, action, outcome, node ('''' where one does not apply)';
COMMENT ON FUNCTION reaper.node() IS
    'This node''s name in reaper.log and reaper.metrics(): pg_reaper.node_name, else cluster_name, else the system identifier';
-- The metrics name the policies: for monitoring roles, as the worker's status.
REVOKE ALL ON FUNCTION reaper.metrics() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reaper.metrics() TO pg_monitor;
