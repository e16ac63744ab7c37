//! pg_reaper's multi-session tests: one test binary (one link) with a module per behaviour.
//! Each test runs against a throwaway cluster of real sessions (see the harness in
//! `pgrx-tests/src/lib.rs`). The pid-reuse tests live in their own binary, `pid_reuse.rs`,
//! because they steer the kernel's next pid and no other test may fork meanwhile.

mod audit_trail;
mod bad_input_catalogue;
mod cancel_then_terminate;
mod cron_schedule;
mod demo;
mod faults;
mod filter_budget;
mod filter_keys;
mod fleet;
mod hidden_sessions;
mod holding_up;
mod incidents;
mod lock_chains;
mod metrics;
mod monitoring;
mod packaging;
mod patroni;
mod permission_matrix;
mod policy_runs;
mod protected_tools;
mod quotas;
mod recheck;
mod refusals;
mod regress;
mod replay;
mod safety;
mod safety_valves;
mod server_log;
mod settings;
mod signalling;
mod snapshot_fidelity;
mod soak;
mod upgrades;
mod vanished;
mod victims_told;
mod worker;
mod worker_settings;
