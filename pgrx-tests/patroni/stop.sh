#!/bin/bash
# Stop the 3 Patroni nodes (which stop their PostgreSQL), then etcd; wipe data unless KEEP_DATA=1.
B=${B:?the directory}
cd "$B" || exit 0
stop_pid() { # pidfile, timeout(s)
  local f=$1 t=$2 p
  [ -f "$f" ] || return 0
  p=$(cat "$f")
  if kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p" 2>/dev/null
    for i in $(seq 1 $((t*10))); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
  fi
  rm -f "$f"
}
for n in 1 2 3; do stop_pid run/patroni$n.pid 30 & done; wait
# any postmaster left behind (e.g. patroni was SIGKILLed)?
for n in 1 2 3; do
  f=data/node$n/postmaster.pid
  if [ -f "$f" ]; then p=$(head -1 "$f"); kill -0 "$p" 2>/dev/null && { kill -QUIT "$p"; sleep 1; kill -KILL "$p" 2>/dev/null; }; fi
done
stop_pid run/etcd.pid 10
[ "${KEEP_DATA:-0}" = 1 ] || rm -rf "$B"
echo stopped
