//! pg_reaper: signal the PostgreSQL backends that match a JSON filter, safely, from SQL.
//!
//! The pipeline, one module per stage: `filter` (the language, pure Rust) → `activity` (the
//! pg_stat_activity snapshot) → `signal` (PostgreSQL's own signal functions, and the wait) →
//! `report` (result rows, server log, audit). `pipeline` strings them together; `api` is the
//! SQL surface.

mod activity;
mod api;
pub mod filter;
mod guc;
mod jsonb_arg;
mod pipeline;
mod policy;
mod report;
mod role;
mod signal;

pgrx::pg_module_magic!();

pgrx::extension_sql_file!("../sql/log.sql", name = "log");
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
        api::run_policy
    ]
);

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::register();
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
                "include_superusers": false, "order": "oldest_backend"
            })
        );
    }

    #[pg_test(
        error = "unknown filter key \"aplication_name\" (did you mean \"application_name\"?)"
    )]
    fn misspelt_key_is_refused() {
        Spi::run("SELECT * FROM reaper.preview_matching('{\"aplication_name\": \"x\"}')").unwrap();
    }

    #[pg_test]
    fn the_caller_never_matches() {
        let mine = Spi::get_one::<i64>(
            "SELECT count(*) FROM reaper.terminate_matching('{\"all\": true, \"include_superusers\": true}')
              WHERE pid = pg_catalog.pg_backend_pid()",
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
