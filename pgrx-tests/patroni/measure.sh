#!/bin/bash
# usage: measure.sh kill|switchover|nodeloss   -> prints seconds until a NEW node accepts writes, and rejoin time
B=/tmp/r07-patroni; PSQL="/usr/lib/postgresql/15/bin/psql -XAtq"
mode=$1
q() { $PSQL "host=127.0.0.1 port=2601$1 user=postgres dbname=postgres connect_timeout=1" -c "$2" 2>/dev/null; }
leader=""; for n in 1 2 3; do [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:2602$n/primary)" = 200 ] && leader=$n; done
[ -z "$leader" ] && { echo "no leader"; exit 1; }
others=$(for n in 1 2 3; do [ $n != $leader ] && echo $n; done)
pmpid=$(head -1 $B/data/node$leader/postmaster.pid)
cand=$(echo $others | awk '{print $1}')
t0=$(date +%s.%N)
case $mode in
  kill) kill -KILL $pmpid ;;
  nodeloss) kill -KILL $(cat $B/run/patroni$leader.pid) $pmpid ;;
  switchover) patronictl -c $B/node1.yml switchover --leader node$leader --candidate node$cand --force >/tmp/r07-patroni/logs/so.out 2>&1 & ;;
esac
new=""
while [ -z "$new" ]; do
  for n in $others; do
    r=$(q $n "select pg_is_in_recovery()")
    if [ "$r" = f ] && q $n "insert into r07_probe values (2)" >/dev/null; then new=$n; break; fi
  done
  [ -z "$new" ] && sleep 0.1
  [ $(echo "$(date +%s.%N) - $t0 > 90" | bc) = 1 ] && { echo timeout; exit 1; }
done
t1=$(date +%s.%N)
[ $mode = nodeloss ] && { env -i PATH=/usr/bin:/bin HOME=/var/lib/postgresql setpriv --reuid=postgres --regid=postgres --init-groups patroni $B/node$leader.yml >>$B/logs/patroni$leader.log 2>&1 & echo $! > $B/run/patroni$leader.pid; }
# wait until old leader streams from new leader
while [ "$(q $new "select count(*) from pg_stat_replication where state='streaming'")" != 2 ]; do
  sleep 0.2; [ $(echo "$(date +%s.%N) - $t0 > 120" | bc) = 1 ] && { echo "rejoin timeout"; break; }
done
t2=$(date +%s.%N)
printf "%s: old=node%s new=node%s writable_after=%.2fs all_streaming_after=%.2fs\n" $mode $leader $new $(echo "$t1-$t0"|bc) $(echo "$t2-$t0"|bc)
