# pg_reaper — every command works on a fresh Debian 12 machine, as root: it installs what is
# missing first, and is quick when everything is already there.
#
# PG=14|15|16|17|18 picks the PostgreSQL major (default 15, Debian's). The first use of another
# major fetches a relocatable build of it (pgrx-tests/postgres.sh); `make pg-config PG=17` prints
# the pg_config every target then uses.

PG             ?= 15
SUPPORTED_PG   := 14 15 16 17 18
PG_DIST        ?= /opt/pg_reaper
PGRX_VERSION   := 0.18.1
APT_PACKAGES   := postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo postgresql-15-cron \
                  python3-pip dpkg-dev binutils mmdebstrap python3-psycopg \
                  prometheus-postgres-exporter prometheus patroni etcd-server curl
# Tests run several real sessions per test; two test threads keep a 2-core machine responsive.
TEST_THREADS   ?= 2
# Cases per property of the filter's property tests: `make test` runs a short pass, `make fuzz`
# a long one.
PROPTEST_CASES ?= 2000
FUZZ_CASES     ?= 100000
SOAK_SECS      ?= 60
REPORT_DIR     := target/reliability
CARGO          ?= cargo
VERSION        := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ARCH           := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)

SHELL          := /bin/bash

ifeq ($(filter $(PG),$(SUPPORTED_PG)),)
$(error PG=$(PG) is not supported: use one of $(SUPPORTED_PG) (13 is out of support upstream))
endif

# The pg_config of the chosen major: Debian's for 15, the fetched build's otherwise. Only a
# PG_CONFIG given on the command line overrides it (an inherited one may be another major's).
ifneq ($(origin PG_CONFIG),command line)
ifeq ($(PG),15)
PG_CONFIG := /usr/lib/postgresql/15/bin/pg_config
else
PG_CONFIG := $(PG_DIST)/postgresql-$(PG)/bin/pg_config
endif
endif
export PG_CONFIG PG_DIST

# Each major builds in its own target directory (its own bindings, no rebuild when switching),
# against its own headers.
EXT_ENV        := CARGO_TARGET_DIR=target/pg$(PG) PGRX_PG_CONFIG_PATH=$(PG_CONFIG)
PGRX_TEST_DATA ?= /tmp/pg_reaper_pgrx$(PG)

# Backtraces would end up in the DETAIL of every error the server reports.
unexport RUST_BACKTRACE

.PHONY: all deps tools pg-config install install-test-build releases upgrade-source test test-all unit-test pg-test \
        integration-test test-versions reliability-report reliability demo bench soak fuzz lint \
        package clean

all: install

# ---- set-up -------------------------------------------------------------------------------
deps: .deps/apt .deps/cargo-pgrx tools $(PG_CONFIG) .deps/pgrx-init-$(PG)

# The stamp names the package list: a list that grows installs again on a machine set up before.
APT_STAMP      := .deps/apt-$(shell echo '$(APT_PACKAGES)' | md5sum | cut -c1-8)
.deps/apt: $(APT_STAMP)
	@touch $@
$(APT_STAMP):
	@mkdir -p .deps
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	    echo "==> installing $(APT_PACKAGES)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi
	@touch $@

.deps/cargo-pgrx: .deps/apt
	@if ! cargo pgrx --version 2>/dev/null | grep -q "$(PGRX_VERSION)"; then \
	    echo "==> installing cargo-pgrx $(PGRX_VERSION) (about 6 minutes)"; \
	    $(CARGO) install cargo-pgrx --version $(PGRX_VERSION) --locked; \
	fi
	@touch $@

# Debian's 15 comes with the apt packages; the other majors are fetched on first use.
$(PG_DIST)/postgresql-%/bin/pg_config:
	@pgrx-tests/postgres.sh $* >/dev/null

# cargo-pgrx must know the major (for `cargo pgrx test`); init merges it into its config.
.deps/pgrx-init-$(PG): .deps/cargo-pgrx $(PG_CONFIG)
	@if ! grep -qs '^pg$(PG) = "$(PG_CONFIG)"' $${PGRX_HOME:-$$HOME/.pgrx}/config.toml; then \
	    $(CARGO) pgrx init --pg$(PG) $(PG_CONFIG); \
	fi
	@touch $@

# Every outside command the targets and the test harness run, checked up front with a clear
# message (the packages above bring them on Debian).
TOOLS := runuser sudo cargo rustc python3 tar dpkg-deb dpkg-shlibdeps strip mmdebstrap
tools: .deps/apt
	@for t in $(TOOLS); do \
	    command -v $$t >/dev/null 2>&1 || { echo "make: '$$t' is required and missing (see README, 'Two commands')" >&2; exit 1; }; \
	done
	@id postgres >/dev/null 2>&1 || { echo "make: the 'postgres' OS user is required (it comes with the postgresql package)" >&2; exit 1; }

# The pg_config the other targets use for PG, fetching the major if needed.
pg-config: .deps/apt
	@pgrx-tests/postgres.sh $(PG)

install: deps
	$(EXT_ENV) $(CARGO) pgrx install --release --pg-config $(PG_CONFIG)

# What the multi-session tests run against: the release build plus the test-only pauses
# (feature test-hooks), which `make install` and the packages never contain.
install-test-build: deps
	$(EXT_ENV) $(CARGO) pgrx install --release --pg-config $(PG_CONFIG) --features test-hooks

# ---- tests --------------------------------------------------------------------------------
# The whole suite for PG (lint first), then one closing line that counts every test of every
# runner. The figures of this run go to target/RELIABILITY.md; nothing tracked is modified
# (`make reliability` copies that report to RELIABILITY.md on purpose).
test: deps
	@mkdir -p target
	@rm -rf $(REPORT_DIR)
	@set -o pipefail; $(MAKE) --no-print-directory test-all 2>&1 | tee target/test.log
	@pgrx-tests/count-tests.sh "PostgreSQL $(PG)" target/test.log

test-all: lint unit-test pg-test integration-test reliability-report

# The pure modules: the filter's unit and property tests, the breaker's and the metrics' merging; no server.
unit-test: deps
	@mkdir -p $(REPORT_DIR)
	PROPTEST_CASES=$(PROPTEST_CASES) $(CARGO) test --lib -p pg_reaper -- filter:: breaker:: metrics::tests
	@printf '## Property tests of the filter module\n\n%s\n' \
	    "Every property (\`src/filter/proptests.rs\`: arbitrary text and JSON never panic; matching agrees with an independent reference matcher; normalizing is idempotent) held for $(PROPTEST_CASES) generated cases each in \`make test\` (run \`make fuzz\` for $(FUZZ_CASES))." \
	    > $(REPORT_DIR)/10-properties.md

# The long property-test run.
fuzz: deps
	@mkdir -p $(REPORT_DIR)
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release --lib -p pg_reaper filter::proptests
	@printf '## Long property-test run\n\n%s\n' \
	    "\`make fuzz\` on $$(date -u +%Y-%m-%d): the four properties held for $(FUZZ_CASES) generated cases each ($$(( 4 * $(FUZZ_CASES) )) in all)." \
	    > $(REPORT_DIR)/11-fuzz.md
	$(MAKE) --no-print-directory reliability-report

# #[pg_test]s inside a server that cargo-pgrx starts (as the postgres OS user); the pure
# filter tests ran above.
pg-test: deps
	$(EXT_ENV) $(CARGO) pgrx test pg$(PG) tests::pg_ --runas postgres --pgdata $(PGRX_TEST_DATA)

# Multi-session tests on throwaway clusters of PG (one per test, or shared by a module's
# tests), in one test binary, plus the pid-reuse binary. The integration binary does not
# depend on the major: it is built once. (The soak runs briefly here; `make soak` runs it for
# SOAK_SECS.)
integration-test: install-test-build package releases $(if $(filter 17,$(PG)),upgrade-source)
	@rm -f target/skipped/pg$(PG).txt
	PG_REAPER_DEB=$(CURDIR)/$(DEB) PG_REAPER_RELEASES=$(CURDIR)/target/releases \
	$(if $(filter 17,$(PG)),PG_REAPER_UPGRADE_FROM=$(dir $(STOCK15_CONFIG))) \
	$(CARGO) test --release -p pg_reaper_integration --tests --no-fail-fast -- --test-threads=$(TEST_THREADS)

# Every supported major: the whole of `make test` on 15 (with pg_cron), then the #[pg_test]s
# and the multi-session suite on 14, 16, 17 and 18 (pg_cron exists here only for 15: its tests
# report themselves skipped there). One summary line per major, and the total.
# FREE_DISK=1 (what .ci/run sets) deletes each major's build once its tests are done: a major
# takes a few GB of builds, and a CI disk may not hold five.
FREE_DISK      ?= 0
free-builds = if [ "$(FREE_DISK)" = 1 ]; then rm -rf target/pg$(1) $(addprefix target/,$(2)); \
    echo "==> PostgreSQL $(1) done, its builds freed; disk: $$(df -h --output=used,avail . | tail -1)"; fi
test-versions:
	@$(MAKE) --no-print-directory test || true
	@$(call free-builds,15,debug)
	@set -o pipefail; for v in $(filter-out 15,$(SUPPORTED_PG)); do \
	    $(MAKE) --no-print-directory -k pg-test integration-test PG=$$v 2>&1 | tee target/test-pg$$v.log || true; \
	    $(call free-builds,$$v); \
	done
	@pgrx-tests/count-tests.sh --versions target/test.log $(foreach v,$(filter-out 15,$(SUPPORTED_PG)),target/test-pg$(v).log)

soak: install-test-build
	PG_REAPER_SOAK_SECS=$(SOAK_SECS) $(CARGO) test --release -p pg_reaper_integration --test it soak:: -- --nocapture
	$(MAKE) --no-print-directory reliability-report

# target/RELIABILITY.md, from the figures this run of the tests wrote to $(REPORT_DIR) (which
# `make test` empties first, so no figure of an earlier run can slip in).
reliability-report:
	@{ printf '# Reliability\n\nGenerated by `make test` (and `make soak`, `make fuzz`) from the figures the suite recorded in `$(REPORT_DIR)/` during the run; written %s.\n\n' "$$(date -u '+%Y-%m-%d %H:%M UTC')"; \
	   for f in $(REPORT_DIR)/*.md; do [ -f "$$f" ] && { cat "$$f"; echo; }; done; } > target/RELIABILITY.md
	@echo "wrote target/RELIABILITY.md"

# The tracked RELIABILITY.md, from the last run's report.
reliability:
	@test -f target/RELIABILITY.md || { echo "make: run 'make test' first" >&2; exit 1; }
	cp target/RELIABILITY.md RELIABILITY.md

# Every earlier release, built from its tag for PostgreSQL 15: the upgrade test walks each one
# forward to this tree's version.
releases: deps
	@pgrx-tests/build-releases.sh

# The source of the pg_upgrade test (15 to 17), run with PG=17: a stock PostgreSQL 15 with this
# tree's pg_reaper. (This machine's Debian postgresql-15 is a build that stores an attribute
# option, pg_attver, on every column of every table; stock PostgreSQL 17 rejects it, so
# pg_upgrade from that build fails for any table, pg_reaper's or not.)
STOCK15_CONFIG := $(PG_DIST)/postgresql-15-stock/bin/pg_config
$(STOCK15_CONFIG):
	@pgrx-tests/postgres.sh 15-stock >/dev/null
upgrade-source: deps $(STOCK15_CONFIG)
	CARGO_TARGET_DIR=target/pg15-stock PGRX_PG_CONFIG_PATH=$(STOCK15_CONFIG) \
	    $(CARGO) pgrx install --release --pg-config $(STOCK15_CONFIG)

# ---- show, measure, ship ------------------------------------------------------------------
demo: install
	bash pgrx-tests/demo.sh

bench: install
	$(CARGO) run --release -q -p pg_reaper_integration --bin bench -- BENCHMARKS.md

# postgresql-$(PG)-pg-reaper_$(VERSION)-1_$(ARCH).deb in target/package/, with the Debian/PGDG
# layout; the test suite checks it (and installs the 15 one on a clean Debian 12 root).
DEB := target/package/pg$(PG)/postgresql-$(PG)-pg-reaper_$(VERSION)-1_$(ARCH).deb
package: deps
	@rm -rf target/package/pg$(PG)
	$(EXT_ENV) $(CARGO) pgrx package --pg-config $(PG_CONFIG) --out-dir target/package/pg$(PG)/build
	@pgrx-tests/package.sh $(PG) $(VERSION) target/package/pg$(PG)

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --features pg_reaper/test-hooks -- -D warnings
	$(CARGO) clippy -p pg_reaper --all-targets --features pg_test -- -D warnings

clean:
	$(CARGO) clean
	rm -rf .deps
