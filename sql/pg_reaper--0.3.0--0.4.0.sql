-- pg_reaper 0.3.0 -> 0.4.0: replayable filters (reaper.test_filter). The new filter keys (lock
-- chains, quotas, include_protected) and settings need no catalog change.
\echo Use "ALTER EXTENSION pg_reaper UPDATE TO '0.4.0'" to load this file. \quit

CREATE FUNCTION reaper."test_filter"(
	"filter" jsonb,
	"sessions" jsonb,
	"now" timestamp with time zone DEFAULT NULL
) RETURNS TABLE (
	"ordinality" INT,
	"pid" INT,
	"matched" bool
)
STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'test_filter_wrapper';

COMMENT ON FUNCTION reaper.test_filter(jsonb, jsonb, timestamp with time zone) IS
    'The filter against saved pg_stat_activity rows (jsonb_agg of the view, with blocking_pids and waitstart for lock keys): which it would select; signals nothing';
