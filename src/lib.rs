//! pg_reaper: signal the PostgreSQL backends that match a JSON filter, safely, from SQL.
//!
//! The pipeline, one module per stage: `filter` (the language, pure Rust) → `activity` (the
//! pg_stat_activity snapshot) → `signal` (PostgreSQL's own signal functions, and the wait) →
//! `report` (result rows, server log, audit); `breaker` caps what a policy may signal, and
//! `reasons` tells each victim why. `pipeline` strings them together; `api` is the
//! SQL surface.

mod activity;
mod api;
mod breaker;
mod compat;
mod error;
pub mod filter;
mod guc;
mod jsonb_arg;
mod locks;
mod metrics;
mod pipeline;
mod policy;
mod reasons;
mod report;
mod role;
mod signal;
mod worker;

pgrx::pg_module_magic!();

pgrx::extension_sql_file!(
    "../sql/library_guard.sql",
    name = "library_guard",
    bootstrap
);
pgrx::extension_sql_file!("../sql/log.sql", name = "log", requires = [api::node]);
pgrx::extension_sql_file!(
    "../sql/policies.sql",
    name = "policies",
    requires = [api::validate_filter]
);
pgrx::extension_sql_file!(
    "../sql/comments.sql",
    name = "comments",
    requires = [
        api::preview_matching,
        api::cancel_matching,
        api::terminate_matching,
        api::cancel_then_terminate,
        api::validate_filter,
        api::run_policies,
        api::run_policy,
        api::worker_status,
        api::worker,
        api::reset_policy,
        api::metrics,
        api::node,
        api::test_filter
    ]
);

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::register();
    // SAFETY: a flag the postmaster sets while it loads shared_preload_libraries.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        guc::set_preloaded();
        reasons::register();
        breaker::register();
        metrics::register();
        worker::register();
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn validate_filter_normalizes() {
        let normal = Spi::get_one::<pgrx::JsonB>(
            "SELECT reaper.validate_filter('{\"min_state_age\": \"2 minutes\", \"usename\": \"app\"}')",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            normal.0,
            serde_json::json!({
                "min_state_age": 120000, "usename": "app",
                "include_superusers": false, "include_protected": false,
                "order": "oldest_backend"
            })
        );
    }

    #[pg_test(
        error = "unknown filter key \"aplication_name\" (did you mean \"application_name\"?)"
    )]
    fn misspelt_key_is_refused() {
        Spi::run("SELECT * FROM reaper.preview_matching('{\"aplication_name\": \"x\"}')").unwrap();
    }

    /// The result columns are a contract: names and order, for every signalling function.
    #[pg_test]
    fn result_columns_follow_the_contract() {
        let core = "pid,backend_start,usename,datname,application_name,client_addr,backend_type,\
                    state,query,outcome,waited_ms,detail,wait_event_type,wait_event,xact_start,\
                    query_start,state_change";
        for (function, inputs, prefix) in [
            ("preview_matching", "filter", ""),
            ("cancel_matching", "filter", ""),
            ("terminate_matching", "filter,timeout_ms", ""),
            ("cancel_then_terminate", "filter,grace_ms,timeout_ms", ""),
            ("run_policies", "", "policy,"),
            ("run_policy", "name", "policy,"),
        ] {
            let sql = format!(
                "SELECT array_to_string(p.proargnames, ',') FROM pg_catalog.pg_proc p \
                  WHERE p.pronamespace = 'reaper'::regnamespace AND p.proname = '{function}'"
            );
            let names = Spi::get_one::<String>(&sql).unwrap().unwrap();
            let sep = if inputs.is_empty() { "" } else { "," };
            assert_eq!(names, format!("{inputs}{sep}{prefix}{core}"), "{function}");
        }
        let volatile = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_catalog.pg_proc p \
              WHERE p.pronamespace = 'reaper'::regnamespace AND p.proname LIKE '%matching' \
                AND p.provolatile = 'v' AND p.proparallel = 'u' AND NOT p.prosecdef",
        )
        .unwrap();
        assert_eq!(volatile, Some(3));
    }

    #[pg_test]
    fn refusals_carry_sqlstate_22023() {
        let caught = pgrx::PgTryBuilder::new(|| {
            Spi::run("SELECT reaper.validate_filter('{\"limit\": 0, \"all\": true}')").unwrap();
            None
        })
        .catch_others(|e| match e {
            pgrx::pg_sys::panic::CaughtError::PostgresError(r) => {
                Some((r.sql_error_code(), r.message().to_string()))
            }
            _ => None,
        })
        .execute();
        let (code, message) = caught.expect("refused");
        assert_eq!(code, PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE);
        assert!(message.contains("\"limit\""), "{message}");
    }

    /// The test-only pauses exist only in builds with the `test-hooks` feature; this build (like
    /// what users install) has none, and the reserved prefix makes naming one an error.
    #[cfg(not(feature = "pg14"))]
    #[pg_test(error = "invalid configuration parameter name \"pg_reaper.recheck_delay_ms\"")]
    fn test_only_settings_do_not_exist_in_release_builds() {
        Spi::run("SET pg_reaper.recheck_delay_ms = 1000").unwrap();
    }

    /// 14 cannot reserve a prefix (a SET of an unknown pg_reaper. setting makes a placeholder),
    /// but the test-only settings are not defined in this build all the same.
    #[cfg(feature = "pg14")]
    #[pg_test]
    fn test_only_settings_do_not_exist_in_release_builds() {
        let defined = Spi::get_one::<String>(
            "SELECT pg_catalog.current_setting('pg_reaper.recheck_delay_ms', true)",
        )
        .unwrap();
        assert_eq!(defined, None);
    }

    #[pg_test]
    fn the_caller_never_matches() {
        // Named by its own pid, with every safety default lifted, the caller is still spared.
        let mine = Spi::get_one::<i64>(
            "SELECT count(*) FROM reaper.terminate_matching(pg_catalog.jsonb_build_object(
                 'pid', pg_catalog.pg_backend_pid(), 'include_superusers', true,
                 'backend_type', pg_catalog.jsonb_build_object('regex', '')))",
        )
        .unwrap();
        assert_eq!(mine, Some(0));
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
