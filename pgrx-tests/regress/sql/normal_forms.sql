-- validate_filter's normal form: every key validated, defaults spelt out, ages in
-- milliseconds. Feeding a normal form back gives it again.
SELECT f AS filter, reaper.validate_filter(f::jsonb) AS normal_form
  FROM (VALUES
    ('{"all": true}'),
    ('{"usename": "app"}'),
    ('{"usename": ["app", "batch"], "datname": {"regex": "^shop"}}'),
    ('{"state": "idle in transaction", "min_state_age": "10 minutes"}'),
    ('{"min_query_age": "1h30m", "min_xact_age": 90000, "min_backend_age": "00:05:00"}'),
    ('{"min_state_age": "1.5 seconds"}'),
    ('{"min_state_age": "250 us"}'),
    ('{"client_addr": "10.1.2.3/8"}'),
    ('{"client_addr": ["::1", "local", "192.168.0.1"]}'),
    ('{"pid": 42}'),
    ('{"pid": [3, 1, 2]}'),
    ('{"blocking": true, "blocked": false}'),
    ('{"any": [{"usename": "a"}, {"application_name": {"regex": "(?i)^report"}}]}'),
    ('{"all": true, "exclude": {"application_name": "psql"}}'),
    ('{"all": true, "limit": 5, "order": "oldest_xact", "include_superusers": true}'),
    ('{"backend_type": "walsender", "include_superusers": true}'),
    ('{"blocking": "root", "min_blocking_age": "30s"}'),
    ('{"blocking": true, "min_blocked_sessions": 10, "min_blocked_age": "1 min"}'),
    ('{"state": "idle", "per": "application_name", "keep": 20, "order": "newest_backend"}'),
    ('{"all": true, "per": ["usename", "datname"], "keep": 5, "limit": 50, "order": "newest_state"}'),
    ('{"application_name": "pg_dump", "include_protected": true}'),
    ('{"holding_up": {"application_name": "checkout", "min_blocked_age": "2s"}}'),
    ('{"holding_up": {"application_name": "checkout"}, "blocking": "root"}')
  ) v(f);

SELECT count(*) AS stable
  FROM (VALUES ('{"usename": ["app"], "min_state_age": "5 minutes", "limit": 3}'),
               ('{"any": [{"pid": 1}, {"all": true}], "exclude": {"state": "idle"}}')) v(f)
 WHERE reaper.validate_filter(reaper.validate_filter(f::jsonb)) = reaper.validate_filter(f::jsonb);
