-- Every refusal a user can meet, with its SQLSTATE. The messages are part of the interface:
-- changing one must show up here as a diff.
CREATE FUNCTION pg_temp.try(statement text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE statement;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

-- Filters: the same refusal from every function that takes one.
SELECT f AS filter, pg_temp.try(format('SELECT reaper.validate_filter(%L::jsonb)', f)) AS refusal
  FROM (VALUES
    ('{}'), ('[]'), ('"idle"'), ('null'), ('42'),
    ('{"aplication_name": "x"}'), ('{"usernme": "x"}'), ('{"stat": "idle"}'),
    ('{"usename": 1}'), ('{"usename": []}'), ('{"usename": [1]}'), ('{"usename": {"regexp": "x"}}'),
    ('{"usename": {"regex": "("}}'), ('{"usename": {"regex": 5}}'), ('{"usename": {}}'),
    ('{"state": "idle in transation"}'), ('{"state": ["idle", "actve"]}'),
    ('{"client_addr": "10.0.0.0/33"}'), ('{"client_addr": "localhost"}'), ('{"client_addr": 1}'),
    ('{"pid": 0}'), ('{"pid": -1}'), ('{"pid": 2147483648}'), ('{"pid": 1.5}'), ('{"pid": "1"}'), ('{"pid": []}'),
    ('{"min_state_age": -1}'), ('{"min_state_age": "5 minuts"}'), ('{"min_state_age": "P1D"}'),
    ('{"min_state_age": true}'), ('{"min_query_age": "-5 minutes"}'), ('{"min_xact_age": 1.5}'),
    ('{"blocking": "yes"}'), ('{"blocked": 1}'),
    ('{"any": {}}'), ('{"any": []}'), ('{"any": [1]}'), ('{"any": [{}]}'),
    ('{"exclude": []}'), ('{"exclude": {"usename": "x"}}'), ('{"all": false}'), ('{"all": "yes"}'),
    ('{"all": true, "limit": 0}'), ('{"all": true, "limit": -1}'), ('{"all": true, "limit": "5"}'),
    ('{"all": true, "order": "oldest"}'), ('{"all": true, "order": 1}'),
    ('{"all": true, "include_superusers": "yes"}'),
    ('{"any": [{"all": true, "limit": 1}]}'), ('{"exclude": {"order": "oldest_xact"}, "all": true}')
  ) v(f);

-- The signalling functions refuse the same way, before anything is signalled.
SELECT pg_temp.try($$SELECT * FROM reaper.preview_matching('{"aplication_name": "x"}')$$);
SELECT pg_temp.try($$SELECT * FROM reaper.cancel_matching('{}')$$);
SELECT pg_temp.try($$SELECT * FROM reaper.terminate_matching('{"state": "idle in transation"}', 1000)$$);
SELECT pg_temp.try($$SELECT * FROM reaper.cancel_then_terminate('{"pid": 0}', 100, 100)$$);

-- Arguments that are not filters.
SELECT pg_temp.try($$SELECT reaper.validate_filter(NULL)$$);
SELECT pg_temp.try($$SELECT * FROM reaper.preview_matching(NULL)$$);
SELECT pg_temp.try($$SELECT * FROM reaper.terminate_matching('{"all": true}', NULL)$$);
SELECT pg_temp.try($$SELECT * FROM reaper.terminate_matching('{"all": true}', -1)$$);
SELECT pg_temp.try($$SELECT * FROM reaper.cancel_then_terminate('{"all": true}', NULL)$$);
SELECT pg_temp.try($$SELECT * FROM reaper.cancel_then_terminate('{"all": true}', -5)$$);
SELECT pg_temp.try($$SELECT * FROM reaper.cancel_then_terminate('{"all": true}', 10, -1)$$);
SELECT pg_temp.try($$SELECT * FROM reaper.run_policy(NULL)$$);
SELECT pg_temp.try($$SELECT * FROM reaper.run_policy('no such policy')$$);
SELECT pg_temp.try($$SELECT reaper.purge_log(NULL)$$);
SELECT pg_temp.try($$SELECT reaper.purge_log('-1 day')$$);

-- Policies are validated when they are written.
SELECT pg_temp.try($$INSERT INTO reaper.policies (name, filter) VALUES ('p', '{"aplication_name": "x"}')$$);
SELECT pg_temp.try($$INSERT INTO reaper.policies (name, filter, action) VALUES ('p', '{"all": true}', 'kill')$$);
SELECT pg_temp.try($$INSERT INTO reaper.policies (name, filter, timeout_ms) VALUES ('p', '{"all": true}', -1)$$);
SELECT pg_temp.try($$INSERT INTO reaper.policies (name, filter, max_signals_per_minute) VALUES ('p', '{"all": true}', -1)$$);
-- holding_up takes a filter, not nested.
SELECT pg_temp.try($$SELECT reaper.validate_filter('{"holding_up": "checkout"}')$$);
SELECT pg_temp.try($$SELECT reaper.validate_filter('{"holding_up": {"holding_up": {"usename": "x"}}}')$$);
-- A dry run is a valid action; resetting a policy that does not exist is not.
INSERT INTO reaper.policies (name, filter, action) VALUES ('dry', '{"all": true}', 'report');
SELECT action, max_signals_per_minute FROM reaper.policies WHERE name = 'dry';
SELECT reaper.reset_policy('dry');
SELECT pg_temp.try($$SELECT reaper.reset_policy('no such policy')$$);
SELECT pg_temp.try($$SELECT reaper.reset_policy(NULL)$$);
DELETE FROM reaper.policies WHERE name = 'dry';
-- Nobody may write a policy that would signal with the rights of a role they cannot act as,
-- and PUBLIC has no rights on the tables.
CREATE ROLE regress_writer;
CREATE ROLE regress_stranger;
GRANT INSERT, UPDATE ON reaper.policies TO regress_writer;
SET ROLE regress_writer;
SELECT pg_temp.try($$INSERT INTO reaper.policies (name, filter, owner) VALUES ('p', '{"all": true}', 'regress_stranger')$$);
SELECT pg_temp.try($$INSERT INTO reaper.policies (name, filter) VALUES ('p', '{"all": true}')$$);
SELECT pg_temp.try($$UPDATE reaper.policies SET owner = 'regress_stranger'$$);
RESET ROLE;
SET ROLE regress_stranger;
SELECT pg_temp.try($$SELECT count(*) FROM reaper.log$$);
SELECT pg_temp.try($$SELECT count(*) FROM reaper.policies$$);
SELECT pg_temp.try($$SELECT reaper.purge_log('1 day')$$);
RESET ROLE;
DELETE FROM reaper.policies;
REVOKE ALL ON reaper.policies FROM regress_writer;
DROP ROLE regress_writer, regress_stranger;

-- A read-only transaction is refused before anything is signalled (its audit rows could not
-- be written); a preview is fine.
BEGIN READ ONLY;
SELECT pg_temp.try($$SELECT * FROM reaper.cancel_matching('{"pid": 1}')$$);
SELECT pg_temp.try($$SELECT * FROM reaper.preview_matching('{"pid": 1}')$$);
COMMIT;

-- Settings: only a superuser may change them. (A misspelt one is an error from 15 on, which
-- reserves the prefix; 14 cannot: tests/it/settings.rs.)
CREATE ROLE regress_plain;
SET ROLE regress_plain;
SELECT pg_temp.try($$SET pg_reaper.audit = off$$);
SELECT pg_temp.try($$SET pg_reaper.log_actions = off$$);
SELECT pg_temp.try($$SET pg_reaper.tell_victims = off$$);
SELECT pg_temp.try($$SET pg_reaper.max_signals_per_minute = 0$$);
SELECT pg_temp.try($$SELECT reaper.reset_policy('dry')$$);
RESET ROLE;
DROP ROLE regress_plain;
