#!/usr/bin/env bash
# The closing count of `make test` / `make test-versions`, from their logs: every
# "test result:" line of every runner, minus the tests that reported themselves skipped (they
# return early, so the runner counts them as passed; each one names itself and its reason in
# target/skipped/pg<major>.txt).
#   count-tests.sh "PostgreSQL 15" target/test.log           one major
#   count-tests.sh --versions target/test.log target/test-pg14.log ...
# Exits non-zero when a test failed or a log holds no result at all (a build that failed).
set -uo pipefail

count() { # log -> "passed failed"
    awk '/^test result:/ { p += $4; f += $6 } END { printf "%d %d\n", p, f }' "$1"
}
major_of() { # log -> major
    case $1 in
        *test-pg*.log) basename "$1" .log | sed 's/test-pg//' ;;
        *) echo "${PG:-15}" ;;
    esac
}

status=0
total_passed=0 total_failed=0 total_skipped=0
why=""
failures() { # label log -> each failed test's panic: its first lines, cut to 300 characters
    awk -v label="$1" '/^thread .* panicked at / { n = 3; print label ": " substr($0, 1, 300); next }
        NF == 0 || /^note: run with/ { n = 0 }
        n > 0 { n--; print "    " substr($0, 1, 300) }' "$2"
}
summary() { # label log major
    local label=$1 log=$2 major=$3 passed failed skipped=0 names=""
    read -r passed failed < <(count "$log")
    local skipfile=target/skipped/pg$major.txt
    if [ -s "$skipfile" ]; then
        skipped=$(wc -l < "$skipfile")
        names=$(paste -sd ';' "$skipfile")
    fi
    passed=$((passed - skipped))
    if ! grep -q '^test result:' "$log"; then
        echo "$label: no test ran (see $log)"
        failed=$((failed + 1))
    else
        echo "$label: $passed passed, $failed failed, $skipped skipped${names:+ ($names)}"
    fi
    [ "$failed" -eq 0 ] || { status=1; why+=$(failures "$label" "$log")$'\n'; }
    total_passed=$((total_passed + passed)); total_failed=$((total_failed + failed))
    total_skipped=$((total_skipped + skipped))
}

if [ "${1:-}" = --versions ]; then
    shift
    for log in "$@"; do
        m=$(major_of "$log")
        summary "PostgreSQL $m" "$log" "$m"
    done
else
    summary "$1" "$2" "$(major_of "$2")"
fi
# What failed, last, where a log's tail shows it.
[ -z "${why//$'\n'/}" ] || printf '%s' "$why"
echo "$total_passed passed, $total_failed failed"
exit $status
