#!/usr/bin/env bash
# make demo: a throwaway cluster, a handful of realistic sessions, and pg_reaper at work on them.
# Runs as root; the cluster runs as the postgres OS user and is removed at the end.
set -euo pipefail

BIN=$("${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}" --bindir)
DIR=$(mktemp -d /tmp/pg_reaper_demo.XXXXXX)
PORT=${DEMO_PORT:-$((20000 + RANDOM % 10000))}
# The fleet's two members, at the end.
read -r -a MEMBER_PORTS <<<"${DEMO_MEMBER_PORTS:-$((PORT + 1)) $((PORT + 2))}"
chown postgres "$DIR"
# Every command runs from the demo's own directory, which the postgres OS user can read (from
# root's, its programs would complain that they cannot change to it).
cd "$DIR"
as_pg() { runuser -u postgres -- "$@"; }

# A UTF-8 cluster whatever the shell's locale (cron, systemd and containers often have none).
export LANG=C.UTF-8 LC_ALL=C.UTF-8

cleanup() {
    for job in $(jobs -p); do kill "$job" 2>/dev/null || true; done
    for data in "$DIR"/data*; do
        as_pg "$BIN/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
    done
    rm -rf "$DIR"
}
trap cleanup EXIT

echo "==> starting a throwaway PostgreSQL cluster in $DIR (port $PORT)"
as_pg "$BIN/initdb" -A trust -U postgres -E UTF8 --locale=C.UTF-8 -D "$DIR/data" >/dev/null
cat >>"$DIR/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DIR'
# The postmaster starts pg_reaper's background worker.
shared_preload_libraries = 'pg_reaper'
# At the end this cluster is a fleet's control: it publishes its policies, gathers the audit.
wal_level = logical
pg_reaper.node_name = 'control'
EOF
as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w start >/dev/null

export PGHOST=$DIR PGPORT=$PORT PGDATABASE=postgres
PSQL=("$BIN/psql" -X -q -v ON_ERROR_STOP=1)
sql() { "${PSQL[@]}" -U postgres "$@"; }
# The SQL goes in on stdin: every statement's result is shown (psql before 15 shows only the
# last one of a -c).
show() { echo; echo "-- $1"; shift; echo "$*" | sed 's/^/   /'; sql <<<"$*"; }

sql <<'EOF'
CREATE EXTENSION pg_reaper;
CREATE ROLE app LOGIN;
CREATE ROLE batch LOGIN;
-- A policy owner needs pg_read_all_stats to see other roles' state and query.
CREATE ROLE ops LOGIN IN ROLE pg_signal_backend, pg_read_all_stats;
CREATE TABLE accounts (id int PRIMARY KEY, balance numeric);
INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 10) g;
GRANT ALL ON accounts TO app, batch;
GRANT SELECT ON reaper.log TO ops;
EOF

# A session that sends $2 and then stays connected, as role $1 with application_name $3.
hold() {
    local role=$1 statements=$2 app=$3
    # No ON_ERROR_STOP here: a cancelled statement must not end the session.
    (echo "$statements"; sleep 600) | PGAPPNAME=$app "$BIN/psql" -X -q -U "$role" >/dev/null 2>&1 &
}
# The same, keeping what its client prints on stderr in $DIR/$3.err (what a user would see).
hold_watched() {
    local role=$1 statements=$2 app=$3
    (echo "$statements"; sleep 600) | PGAPPNAME=$app "$BIN/psql" -X -q -U "$role" >/dev/null 2>"$DIR/$app.err" &
}
# Waits (up to 30 s) until the SQL condition $2 holds.
wait_for() { # what condition [seconds, 30 by default]
    local what=$1 condition=$2 seconds=${3:-30}
    for _ in $(seq $((seconds * 10))); do
        [ "$(sql -Atc "$condition")" = t ] && return 0
        sleep 0.1
    done
    echo "demo: timed out waiting until $what" >&2
    exit 1
}

# A session that runs one statement until it ends or is stopped.
run() {
    local role=$1 statement=$2 app=$3
    PGAPPNAME=$app "${PSQL[@]}" -U "$role" -c "$statement" >/dev/null 2>&1 &
}

echo "==> opening sessions"
hold app   "BEGIN; SELECT balance FROM accounts WHERE id = 1;" web-checkout   # idle in transaction
hold_watched app "SELECT pg_sleep(600);"                         report-daily    # a long query
hold batch "BEGIN; LOCK TABLE accounts IN ROW EXCLUSIVE MODE; UPDATE accounts SET balance = 0 WHERE id = 2;" nightly-batch
wait_for "nightly-batch holds its lock" \
    "SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'nightly-batch' AND state = 'idle in transaction'"
run  app   "UPDATE accounts SET balance = balance + 1 WHERE id = 2" web-api   # blocked behind nightly-batch
hold postgres "SELECT 1;" admin-console                                      # a superuser
hold app   "SELECT 1;" web-idle                                              # plain idle
wait_for "every session is in place" \
    "SELECT count(*) = 6 FROM pg_stat_activity
      WHERE (application_name, state) IN (('web-checkout', 'idle in transaction'), ('report-daily', 'active'),
             ('nightly-batch', 'idle in transaction'), ('web-api', 'active'), ('admin-console', 'idle'),
             ('web-idle', 'idle'))
        AND (application_name <> 'report-daily' OR wait_event = 'PgSleep')
        AND (application_name <> 'web-api' OR wait_event_type = 'Lock')"

show "Every client session (pg_stat_activity, as it is)" \
    "SELECT pid, usename, application_name, state, wait_event_type, left(query, 50) AS query
       FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() ORDER BY backend_start;"

show "Preview {\"all\": true}: never this session, never the superuser, never background processes" \
    "SELECT pid, usename, application_name, state, outcome
       FROM reaper.preview_matching('{\"all\": true}');"

show "A typo is an error, not an empty result (SQLSTATE 22023)" \
    "SELECT * FROM reaper.preview_matching('{\"state\": \"idle in transation\"}');" || true

show "Who blocks whom?" \
    "SELECT pid, usename, application_name, state, outcome
       FROM reaper.preview_matching('{\"any\": [{\"blocking\": true}, {\"blocked\": true}]}');"

show "Cancel the long report: the query stops, the session lives" \
    "SELECT pid, application_name, outcome, detail
       FROM reaper.cancel_matching('{\"application_name\": {\"regex\": \"^report-\"}, \"state\": \"active\"}');"

for _ in $(seq 300); do grep -q DETAIL "$DIR/report-daily.err" 2>/dev/null && break; sleep 0.1; done
echo
echo "-- What report-daily's client (psql) printed: PostgreSQL's own error, and why (pg_reaper.tell_victims)"
sed 's/^/   /' "$DIR/report-daily.err"

show "Terminate the lock holder and confirm it is gone (one deadline for all victims)" \
    "SELECT pid, usename, application_name, outcome, waited_ms
       FROM reaper.terminate_matching('{\"blocking\": true}', 5000);"

show "A role without rights over app's sessions gets 'denied' rows, not an error" \
    "SET ROLE batch; SELECT pid, usename, outcome, detail
       FROM reaper.terminate_matching('{\"usename\": \"app\", \"application_name\": {\"regex\": \"^web-\"}}', 1000); RESET ROLE;"

wait_for "web-checkout has been idle in transaction for a second (what the policy asks)" \
    "SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'web-checkout'
        AND state = 'idle in transaction' AND state_change < now() - interval '1 second'"
show "A policy, owned by ops (pg_signal_backend, pg_read_all_stats), run the way pg_cron would run it" \
    "INSERT INTO reaper.policies (name, filter, action, timeout_ms, owner, note)
     VALUES ('idle-tx', '{\"state\": \"idle in transaction\", \"min_state_age\": \"1 second\"}', 'terminate', 5000, 'ops',
             'idle transactions hold locks');
     SELECT policy, pid, usename, application_name, outcome, waited_ms FROM reaper.run_policies();"

echo
echo "==> the background worker: a policy with run_every, enforced with no call at all"
sql -c "INSERT INTO reaper.policies (name, filter, action, run_every, owner, note)
        VALUES ('idle-checkout', '{\"application_name\": \"checkout-2\", \"state\": \"idle in transaction\"}',
                'terminate', '500 ms', 'ops', 'enforced by the worker, twice a second')"
hold app "BEGIN; SELECT balance FROM accounts WHERE id = 3;" checkout-2
wait_for "checkout-2 is idle in transaction" \
    "SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'checkout-2' AND state = 'idle in transaction'"
started=$(date +%s%N)
wait_for "the worker terminates checkout-2" \
    "SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'checkout-2'"
echo "   checkout-2 was gone $(( ($(date +%s%N) - started) / 1000000 )) ms after it was seen idle in transaction; nobody called anything"

show "What the worker knows (shared memory; a hot standby answers too)" \
    "SELECT policy, run_on, run_every, runs, signalled, last_outcomes, last_error, last_duration_ms
       FROM reaper.worker_status();"

show "The worker itself: never a victim (no regex selects it), restarted by the postmaster if stopped" \
    "SELECT w.pid, w.state, w.database, a.backend_type, a.application_name
       FROM reaper.worker() w JOIN pg_stat_activity a USING (pid);"

echo
echo "==> quotas, protected tools, replay"
for _ in 1 2 3 4; do hold app "SELECT 1;" pool; done
hold app "SELECT 1;" pg_dump
wait_for "the pool and the dump are connected" \
    "SELECT count(*) = 5 FROM pg_stat_activity WHERE application_name IN ('pool', 'pg_dump') AND state = 'idle'"

show "At most 2 idle connections per application, the newest kept: the 2 oldest of the pool go" \
    "SELECT pid, application_name, to_char(backend_start, 'HH24:MI:SS.MS') AS started, outcome
       FROM reaper.preview_matching('{\"state\": \"idle\", \"application_name\": \"pool\",
                                      \"per\": [\"application_name\"], \"keep\": 2, \"order\": \"newest_backend\"}');"

show "{\"all\": true} never touches pg_dump (and says so): pg_reaper.protected_applications" \
    "SELECT pid, application_name, outcome FROM reaper.preview_matching('{\"all\": true}');"

show "Replay: the same filter against a saved pg_stat_activity, signalling nothing" \
    "CREATE TEMP TABLE capture AS SELECT jsonb_agg(to_jsonb(a) || jsonb_build_object('now', now())) AS sessions
       FROM pg_stat_activity a WHERE application_name = 'pool';
     SELECT t.ordinality, t.pid, t.matched
       FROM capture, reaper.test_filter('{\"all\": true, \"per\": [\"application_name\"], \"keep\": 2, \"order\": \"newest_backend\"}', sessions) t;"

show "The audit trail: who killed what, when, and why" \
    "SELECT to_char(logged_at, 'HH24:MI:SS.MS') AS at, caller, run_as, policy, action, outcome, pid, application_name
       FROM reaper.log ORDER BY logged_at;"

echo
echo "-- The server log keeps a line per signal, whatever happens to the transaction:"
grep -o 'pg_reaper: .*' "$DIR/server.log" | sed 's/^/   /'

show "What is left" \
    "SELECT pid, usename, application_name, state FROM pg_stat_activity
      WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() ORDER BY backend_start;"
echo
echo "==> a fleet: two member clusters take this one's policies, and it gathers their audit"
sql -c "CREATE PUBLICATION reaper_policies FOR TABLE reaper.policies"
for m in 1 2; do
    port=${MEMBER_PORTS[$((m - 1))]}
    as_pg "$BIN/initdb" -A trust -U postgres -E UTF8 --locale=C.UTF-8 -D "$DIR/data-m$m" >/dev/null
    cat >>"$DIR/data-m$m/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$DIR'
shared_preload_libraries = 'pg_reaper'
wal_level = logical
pg_reaper.node_name = 'm$m'
EOF
    as_pg "$BIN/pg_ctl" -D "$DIR/data-m$m" -l "$DIR/server-m$m.log" -w start >/dev/null
    # The README's recipe: the member subscribes to the policies and publishes its log (inserts
    # only: its purges stay local); the control subscribes to that.
    sql -p "$port" <<EOF
CREATE EXTENSION pg_reaper;
CREATE ROLE app LOGIN;
CREATE ROLE ops LOGIN IN ROLE pg_signal_backend, pg_read_all_stats;
CREATE SUBSCRIPTION reaper_policies_m$m CONNECTION 'host=127.0.0.1 port=$PORT dbname=postgres user=postgres'
    PUBLICATION reaper_policies;
CREATE PUBLICATION reaper_log FOR TABLE reaper.log WITH (publish = 'insert');
EOF
    sql -c "CREATE SUBSCRIPTION reaper_log_m$m CONNECTION 'host=127.0.0.1 port=$port dbname=postgres user=postgres'
            PUBLICATION reaper_log"
    # A checkout left idle in a transaction there: the member's worker enforces the control's
    # 'idle-checkout' policy on it.
    PGPORT=$port hold app "BEGIN; SELECT 1;" checkout-2
done
# Logical replication takes its time to start: 14 and 15 start a server's subscriptions one
# wal_retrieve_retry_interval (5 s) apart.
wait_for "both members' rows reach the control" \
    "SELECT count(*) = 2 FROM reaper.log WHERE node IN ('m1', 'm2') AND policy = 'idle-checkout'" 90
show "One audit for the fleet: the control's reaper.log, each row naming the node that wrote it" \
    "SELECT node, policy, action, outcome, count(*) FROM reaper.log GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 4;"

echo
echo "==> done; stopping the clusters"
