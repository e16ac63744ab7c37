#!/usr/bin/env bash
# Builds every earlier release listed in releases.txt from its tag (or its commit, in a clone
# without tags) for Debian's PostgreSQL 15, the only major 0.1.x supports, into
# target/releases/<version>/pkg (the `cargo pgrx package` tree). Quick once built.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=$here/target/releases
pg_config=/usr/lib/postgresql/15/bin/pg_config
grep -v '^#' "$here/pgrx-tests/releases.txt" | while read -r version tag commit; do
    [ -n "$version" ] || continue
    [ -f "$out/$version/built" ] && continue
    ref=$tag
    git -C "$here" rev-parse -q --verify "$ref^{commit}" >/dev/null || ref=$commit
    echo "==> building pg_reaper $version from $ref (for the upgrade test)"
    rm -rf "$out/$version"
    mkdir -p "$out/$version/src"
    git -C "$here" archive "$ref" | tar -x -C "$out/$version/src"
    (cd "$out/$version/src" && CARGO_TARGET_DIR=$out/build PGRX_PG_CONFIG_PATH=$pg_config \
        cargo pgrx package --pg-config "$pg_config" --out-dir "$out/$version/pkg" >"$out/$version/build.log" 2>&1) \
        || { tail -20 "$out/$version/build.log" >&2; exit 1; }
    touch "$out/$version/built"
done
# The releases are packaged; their shared build tree is only disk.
rm -rf "$out/build"
