# pg_reaper — every command works on a fresh Debian 12 machine, as root: it installs what is
# missing first, and is quick when everything is already there.

PG_CONFIG      ?= /usr/lib/postgresql/15/bin/pg_config
PGRX_VERSION   := 0.18.1
APT_PACKAGES   := postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo postgresql-15-cron
PGRX_TEST_DATA ?= /tmp/pg_reaper_pgrx
# Tests run several real sessions per test; two test threads keep a 2-core machine responsive.
TEST_THREADS   ?= 2
CARGO          ?= cargo

export PG_CONFIG
# Backtraces would end up in the DETAIL of every error the server reports.
unexport RUST_BACKTRACE

.PHONY: all deps install test unit-test pg-test integration-test demo bench soak fuzz lint clean

all: install

# ---- set-up -------------------------------------------------------------------------------
deps: .deps/apt .deps/cargo-pgrx .deps/pgrx-init

.deps/apt:
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

.deps/pgrx-init: .deps/cargo-pgrx
	@if ! grep -qs '^pg15' $${PGRX_HOME:-$$HOME/.pgrx}/config.toml; then \
	    $(CARGO) pgrx init --pg15 $(PG_CONFIG); \
	fi
	@touch $@

install: deps
	$(CARGO) pgrx install --release --pg-config $(PG_CONFIG)

# ---- tests --------------------------------------------------------------------------------
test: unit-test pg-test integration-test

# The pure filter module: unit and property tests, no server.
unit-test: deps
	$(CARGO) test --lib -p pg_reaper filter::

# #[pg_test]s inside a server that cargo-pgrx starts (as the postgres OS user).
pg-test: deps
	$(CARGO) pgrx test pg15 --runas postgres --pgdata $(PGRX_TEST_DATA)

# Multi-session tests: each test file starts its own throwaway cluster.
integration-test: install
	$(CARGO) test --release -p pg_reaper_integration -- --test-threads=$(TEST_THREADS)

# ---- show and measure ---------------------------------------------------------------------
demo: install
	bash pgrx-tests/demo.sh

bench: install
	$(CARGO) run --release -q -p pg_reaper_integration --bin bench -- BENCHMARKS.md

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf .deps
