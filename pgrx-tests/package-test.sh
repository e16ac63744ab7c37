#!/usr/bin/env bash
# Installs a postgresql-15-pg-reaper .deb on a clean Debian 12 root that has nothing but
# postgresql-15 (built once with mmdebstrap from this machine's apt sources, then reused as the
# read-only lower layer of an overlay whose writes go to a tmpfs), starts a cluster there,
# creates the extension and terminates a real session with it.
#   package-test.sh path/to/postgresql-15-pg-reaper_X-1_amd64.deb
set -euo pipefail

deb=$(readlink -f "${1:?usage: package-test.sh DEB}")
cache=${PG_REAPER_ROOT_CACHE:-/var/cache/pg_reaper}
lower=$cache/bookworm-postgresql-15
sources=/etc/apt/sources.list.d/debian.sources
[ -f "$sources" ] || sources=/etc/apt/sources.list

if [ ! -d "$lower" ]; then
    echo "==> building a clean Debian 12 root with postgresql-15 in $lower (once; about a minute)"
    command -v mmdebstrap >/dev/null || { echo "package-test.sh: mmdebstrap is required" >&2; exit 2; }
    mkdir -p "$cache"
    rm -rf "$lower.partial"
    mmdebstrap --quiet --variant=minbase --include=postgresql-15 bookworm "$lower.partial" - < "$sources"
    mv "$lower.partial" "$lower"
fi

work=$(mktemp -d /tmp/pg_reaper_root.XXXXXX)
root=$work/merged
port=$((40000 + RANDOM % 20000))
as_pg() { chroot "$root" runuser -u postgres -- "$@"; }
cleanup() {
    set +e
    [ -d "$root/tmp/pgdata" ] && as_pg /usr/lib/postgresql/15/bin/pg_ctl -D /tmp/pgdata -m immediate stop >/dev/null 2>&1
    # Any process still running in the root (found by its root, never by name or uid).
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && kill -9 "${p#/proc/}" 2>/dev/null
    done
    for m in dev/pts dev/shm proc; do umount "$root/$m" 2>/dev/null; done
    umount "$root" 2>/dev/null
    umount "$work" 2>/dev/null
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

mount -t tmpfs -o mode=0755 pg_reaper_root "$work"
mkdir "$work/upper" "$work/work" "$root"
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$work/upper,workdir=$work/work" "$root"
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=1777 shm "$root/dev/shm"
mkdir -p "$root/dev/pts"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$root/dev/pts"
# No service may start while packages are installed.
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"

echo "==> apt install ./$(basename "$deb") on a clean Debian 12 root"
cp "$deb" "$root/tmp/"
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "/tmp/$(basename "$deb")" 2>&1 \
    | grep -E '^(Setting up|Unpacking|E:)' || true
chroot "$root" dpkg -s "$(dpkg-deb --field "$deb" Package)" | grep -E '^(Package|Status|Version):'

echo "==> a cluster, CREATE EXTENSION pg_reaper, and a real session terminated"
bin=/usr/lib/postgresql/15/bin
as_pg $bin/initdb -D /tmp/pgdata -A trust -U postgres -E UTF8 --locale=C.UTF-8 >/dev/null
as_pg $bin/pg_ctl -D /tmp/pgdata -l /tmp/pgdata.log -w \
    -o "-c listen_addresses='' -k /tmp -p $port" start >/dev/null
psql() { chroot "$root" runuser -u postgres -- $bin/psql -X -q -A -t -h /tmp -p "$port" -U postgres -v ON_ERROR_STOP=1 "$@"; }
psql -c "CREATE EXTENSION pg_reaper"
psql -c "SELECT 'installed ' || extversion FROM pg_extension WHERE extname = 'pg_reaper'"
chroot "$root" runuser -u postgres -- env PGAPPNAME=package_victim \
    $bin/psql -X -q -h /tmp -p "$port" -U postgres -c "SELECT pg_sleep(600)" >/dev/null 2>&1 &
for _ in $(seq 100); do
    [ "$(psql -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'package_victim' AND state = 'active'")" = 1 ] && break
    sleep 0.1
done
psql -c "SELECT 'victim ' || outcome FROM reaper.terminate_matching('{\"application_name\": \"package_victim\", \"include_superusers\": true}', 5000)"
psql -c "SELECT 'audited ' || count(*) FROM reaper.log WHERE application_name = 'package_victim' AND outcome = 'terminated'"
psql -c "SELECT 'left ' || count(*) FROM pg_stat_activity WHERE application_name = 'package_victim'"
# What users install has none of the test suite's settings.
if psql -c "LOAD 'pg_reaper'" -c "SET pg_reaper.recheck_delay_ms = 1" 2>/dev/null; then
    echo "test-only setting present in the package" >&2; exit 1
fi
echo "no test-only settings"
