#!/usr/bin/env bash
# Builds postgresql-<major>-pg-reaper_<version>-1_amd64.deb with the Debian/PGDG layout, from
# what `cargo pgrx package` staged (whatever paths that server's pg_config gave it):
#   /usr/lib/postgresql/<major>/lib/pg_reaper.so
#   /usr/share/postgresql/<major>/extension/pg_reaper.control, pg_reaper--*.sql
#   /usr/share/doc/postgresql-<major>-pg-reaper/{copyright,changelog.Debian.gz}
# Depends on postgresql-<major> (unversioned, as pg_buildext does) and the libraries the .so
# links to. Reproducible: SOURCE_DATE_EPOCH defaults to the last commit's time.
#   package.sh MAJOR VERSION DIR    (DIR/build: the cargo pgrx package output; the .deb goes to DIR)
set -euo pipefail

major=${1:?major} version=${2:?version} dir=$(readlink -f "${3:?dir}")
package=postgresql-$major-pg-reaper
revision=$version-1
arch=$(dpkg --print-architecture)
here=$(cd "$(dirname "$0")/.." && pwd)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$here" log -1 --format=%ct 2>/dev/null || date +%s)}

so=$(find "$dir/build" -name pg_reaper.so -type f | head -1)
control=$(find "$dir/build" -name pg_reaper.control -type f | head -1)
[ -n "$so" ] && [ -n "$control" ] || { echo "package.sh: nothing staged in $dir/build" >&2; exit 1; }
extension_dir=$(dirname "$control")

root=$dir/root
rm -rf "$root"
umask 022
install -d "$root/DEBIAN" "$root/usr/lib/postgresql/$major/lib" \
    "$root/usr/share/postgresql/$major/extension" "$root/usr/share/doc/$package"
install -m 0644 "$so" "$root/usr/lib/postgresql/$major/lib/pg_reaper.so"
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
    "$root/usr/lib/postgresql/$major/lib/pg_reaper.so"
install -m 0644 "$control" "$extension_dir"/pg_reaper--*.sql "$root/usr/share/postgresql/$major/extension/"

{
    printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n'
    printf 'Upstream-Name: pg_reaper\n\nFiles: *\nCopyright: 2026 The pg_reaper developers\nLicense: PostgreSQL\n'
    # The licence text, indented, blank lines as " ."
    sed -n '5,$p' "$here/LICENSE" | sed 's/^$/./; s/^/ /'
} > "$root/usr/share/doc/$package/copyright"
printf '%s (%s) unstable; urgency=medium\n\n  * pg_reaper %s for PostgreSQL %s.\n\n -- pg_reaper developers <pg_reaper@localhost>  %s\n' \
    pg-reaper "$revision" "$version" "$major" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")" \
    | gzip -9n > "$root/usr/share/doc/$package/changelog.Debian.gz"

# The libraries the .so needs (dpkg-shlibdeps reads a debian/control in its working directory).
shlibs_dir=$(mktemp -d)
mkdir "$shlibs_dir/debian"
printf 'Source: pg-reaper\n\nPackage: %s\nArchitecture: any\n' "$package" > "$shlibs_dir/debian/control"
shlibs=$(cd "$shlibs_dir" && dpkg-shlibdeps -O "$root/usr/lib/postgresql/$major/lib/pg_reaper.so" 2>/dev/null \
    | sed -n 's/^shlibs:Depends=//p')
rm -rf "$shlibs_dir"

# Installed-Size as dpkg-gencontrol counts it: KiB per file, rounded up, and 1 per directory.
size=$(cd "$root" && find . -mindepth 1 -path ./DEBIAN -prune -o \( -type f -printf '%s\n' -o -printf '1024\n' \) \
    | awk '{ k += int(($1 + 1023) / 1024) } END { print k }')
cat > "$root/DEBIAN/control" <<CONTROL
Package: $package
Source: pg-reaper
Version: $revision
Architecture: $arch
Maintainer: pg_reaper developers <pg_reaper@localhost>
Installed-Size: $size
Depends: postgresql-$major${shlibs:+, $shlibs}
Section: database
Priority: optional
Description: PostgreSQL $major extension: signal the backends that match a JSON filter
 pg_reaper previews, cancels or terminates the PostgreSQL backends that match a
 validated JSON filter, from SQL, with one result row per backend, an identity
 re-check before each signal, stored policies, escalation and an audit trail.
CONTROL
(cd "$root" && find usr -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum > DEBIAN/md5sums)
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"
deb=$dir/${package}_${revision}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
