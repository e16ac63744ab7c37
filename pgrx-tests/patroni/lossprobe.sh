#!/bin/bash
# commits rows via pgbench (1 client), SIGKILLs leader postmaster mid-run, compares acked txns vs rows on new leader
B=/tmp/r07-patroni; P=/usr/lib/postgresql/15/bin
L=$(for n in 1 2 3; do [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:2602$n/primary)" = 200 ] && echo $n; done)
$P/psql -XAtq "host=127.0.0.1 port=2601$L user=postgres" -c "drop table if exists lp; create table lp(i serial primary key, t timestamptz default now())"
sleep 1
echo "insert into lp default values;" > $B/run/lp.sql
$P/pgbench -n -c ${CLIENTS:-4} -T 8 -f $B/run/lp.sql "host=127.0.0.1 port=2601$L user=postgres" > $B/logs/lp.log 2>&1 &
sleep 3; kill -KILL $(head -1 $B/data/node$L/postmaster.pid); wait
acked=$(grep "actually processed" $B/logs/lp.log | grep -o '[0-9]*/' | tr -d /)
[ -z "$acked" ] && acked=$(grep "actually processed" $B/logs/lp.log | awk '{print $NF}')
for i in $(seq 1 100); do
  N=$(for n in 1 2 3; do [ $n != $L ] && [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:2602$n/primary)" = 200 ] && echo $n; done)
  [ -n "$N" ] && break; sleep 0.2; done
rows=$($P/psql -XAtq "host=127.0.0.1 port=2601$N user=postgres" -c "select count(*) from lp")
echo "old=node$L new=node$N acked_txns=$acked rows_on_new_leader=$rows"
grep "actually processed" $B/logs/lp.log
