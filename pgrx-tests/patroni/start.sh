#!/bin/bash
# Starts etcd and 3 Patroni nodes of PostgreSQL 15 on 127.0.0.1, with pg_reaper preloaded and
# pg_reaper.node_name = nodeN; waits until a leader accepts writes and both replicas stream.
#   B: its directory (made here), P: the port base (three digits, e.g. 261):
#   etcd client ${P}00, peer ${P}01; PostgreSQL node N ${P}1N; Patroni REST ${P}2N.
set -euo pipefail
B=${B:?the directory}
P=${P:?the port base}
HERE=$(cd "$(dirname "$0")" && pwd)
PGBIN=/usr/lib/postgresql/15/bin
TIMEOUT=${TIMEOUT:-120}
T0=$(date +%s.%N)
mkdir -p "$B"; cd "$B"

if [ -e run/etcd.pid ] && kill -0 "$(cat run/etcd.pid)" 2>/dev/null; then
  echo "already running? run ./stop.sh first" >&2; exit 1
fi
rm -rf data run logs
mkdir -p data/etcd run logs
chown postgres:postgres run logs
chmod 700 data/etcd
install -d -o postgres -g postgres -m 700 data/node1 data/node2 data/node3   # patroni needs empty dirs

for n in 1 2 3; do sed "s/@N@/$n/g; s|@B@|$B|g; s/@P@/$P/g" "$HERE/patroni-node.yml.tmpl" > node$n.yml; done
chmod 755 "$B"; chmod 644 node*.yml

# --- etcd (single member, v3 API) ---
etcd --name reaper --data-dir "$B/data/etcd" \
  --listen-client-urls http://127.0.0.1:${P}00 --advertise-client-urls http://127.0.0.1:${P}00 \
  --listen-peer-urls http://127.0.0.1:${P}01 --initial-advertise-peer-urls http://127.0.0.1:${P}01 \
  --initial-cluster reaper=http://127.0.0.1:${P}01 --initial-cluster-state new \
  --initial-cluster-token reaper >"$B/logs/etcd.log" 2>&1 &
echo $! > run/etcd.pid
for i in $(seq 1 100); do
  curl -fsS http://127.0.0.1:${P}00/health 2>/dev/null | grep -q '"health":"true"' && break
  sleep 0.1
  [ "$i" = 100 ] && { echo "etcd did not come up" >&2; exit 1; }
done

# --- patroni x3 (as postgres; setpriv execs, so $! is patroni's own pid) ---
for n in 1 2 3; do
  env -i PATH=/usr/bin:/bin HOME=/var/lib/postgresql USER=postgres LANG=C.UTF-8 \
    setpriv --reuid=postgres --regid=postgres --init-groups \
    patroni "$B/node$n.yml" >"$B/logs/patroni$n.log" 2>&1 &
  echo $! > run/patroni$n.pid
done

deadline=$(( $(date +%s) + TIMEOUT ))
leader=""
while :; do
  [ "$(date +%s)" -gt "$deadline" ] && { echo "timeout waiting for cluster" >&2; patronictl -c node1.yml list >&2 || true; exit 1; }
  leader=""; nrep=0
  for n in 1 2 3; do
    code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:${P}2$n/primary || true)
    [ "$code" = 200 ] && leader=$n
    code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:${P}2$n/replica || true)
    [ "$code" = 200 ] && nrep=$((nrep+1))
  done
  if [ -n "$leader" ] && [ "$nrep" = 2 ]; then
    ok=$($PGBIN/psql -XAtq "host=127.0.0.1 port=${P}1$leader user=postgres dbname=postgres connect_timeout=2" -c \
      "CREATE TABLE IF NOT EXISTS reaper_probe(i int); INSERT INTO reaper_probe VALUES (1);
       SELECT count(*) FROM pg_stat_replication WHERE state='streaming'" 2>/dev/null || true)
    [ "$ok" = 2 ] && break
  fi
  sleep 0.5
done
T1=$(date +%s.%N)
echo "READY_SECONDS=$(awk "BEGIN{print $T1 - $T0}")"
echo "ETCD=127.0.0.1:${P}00"
for n in 1 2 3; do
  role=replica; [ "$n" = "$leader" ] && role=leader
  echo "NODE$n pg=127.0.0.1:${P}1$n rest=127.0.0.1:${P}2$n role=$role"
done
echo "LEADER=$leader"
