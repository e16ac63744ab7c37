//! The bad-input catalogue: every invalid filter or argument is refused with SQLSTATE 22023 and
//! a message naming the problem, quickly, before anything is signalled.

use pg_reaper_integration::*;
use std::time::{Duration, Instant};

/// (filter as JSON text, or None for SQL NULL; a substring the message must contain)
fn catalogue() -> Vec<(Option<String>, &'static str)> {
    let s = |t: &str| Some(t.to_string());
    let mut nested_any = String::from(r#"{"usename": "x"}"#);
    for _ in 0..20 {
        nested_any = format!(r#"{{"any": [{nested_any}]}}"#);
    }
    let deep_array = format!(
        r#"{{"usename": {}"x"{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let huge_string = format!(r#"{{"application_name": "{}"}}"#, "x".repeat(1 << 20));
    let long_string = format!(r#"{{"application_name": "{}"}}"#, "y".repeat(5000));
    let many_pids = format!(r#"{{"pid": [{}]}}"#, vec!["1"; 10_001].join(","));
    vec![
        (None, "must not be NULL"),
        (s("null"), "must not be NULL"),
        (s("[]"), "must be a JSON object, not an array"),
        (s(r#""x""#), "must be a JSON object, not a string"),
        (s("1"), "must be a JSON object, not a number"),
        (s("true"), "must be a JSON object, not a boolean"),
        (s("{}"), "has no criterion"),
        (s(r#"{"limit": 1}"#), "has no criterion"),
        (s(r#"{"exclude": {"usename": "x"}}"#), "has no criterion"),
        (
            s(r#"{"aplication_name": "x"}"#),
            r#"did you mean "application_name""#,
        ),
        (s(r#"{"usernme": "x"}"#), r#"did you mean "usename""#),
        (
            s(r#"{"min_state_ag": 1}"#),
            r#"did you mean "min_state_age""#,
        ),
        (s(r#"{"🔥": 1}"#), r#"unknown filter key "🔥""#),
        (s(r#"{"usename\u200f": "x"}"#), "unknown filter key"),
        (
            s(r#"{"usename": 1}"#),
            r#"filter key "usename" must be a string"#,
        ),
        (
            s(r#"{"usename": [null]}"#),
            r#""usename[0]" must be a string, not null"#,
        ),
        (
            s(r#"{"usename": ["a", 2]}"#),
            r#""usename[1]" must be a string"#,
        ),
        (s(r#"{"usename": []}"#), "must not be an empty array"),
        (s(r#"{"usename": {}}"#), r#""usename" must be a string"#),
        (
            s(r#"{"usename": {"regexp": "a"}}"#),
            r#"did you mean "regex""#,
        ),
        (s(r#"{"query": {"regex": "("}}"#), "invalid regex"),
        (s(r#"{"query": {"regex": "(a)\\1"}}"#), "invalid regex"),
        (s(r#"{"query": {"regex": "(?<=a)b"}}"#), "invalid regex"),
        (
            s(r#"{"state": "idle in transation"}"#),
            r#"did you mean "idle in transaction""#,
        ),
        (s(r#"{"state": "running"}"#), "unknown state"),
        (
            s(r#"{"client_addr": "10.0.0.0/33"}"#),
            "is not an IP address",
        ),
        (s(r#"{"client_addr": "300.1.1.1"}"#), "is not an IP address"),
        (s(r#"{"client_addr": "localhost"}"#), "is not an IP address"),
        (
            s(r#"{"client_addr": ["local", 7]}"#),
            r#""client_addr[1]" must be an address string"#,
        ),
        (s(r#"{"pid": "123"}"#), r#""pid" must be an integer"#),
        (s(r#"{"pid": 1.5}"#), "not a fractional number"),
        (s(r#"{"pid": 0}"#), "out of range"),
        (s(r#"{"pid": 3000000000}"#), "out of range"),
        (s(r#"{"pid": 1e400}"#), "not valid JSON"),
        (s(r#"{"min_state_age": -1}"#), "must not be negative"),
        (
            s(r#"{"min_query_age": "-5 minutes"}"#),
            "must not be negative",
        ),
        (
            s(r#"{"min_xact_age": "5 minuts"}"#),
            r#"did you mean "minutes""#,
        ),
        (s(r#"{"min_backend_age": "P1D"}"#), "not a valid interval"),
        (
            s(r#"{"min_state_age": 9223372036854775807}"#),
            "out of range",
        ),
        (s(r#"{"min_state_age": null}"#), "interval string"),
        (
            s(r#"{"blocking": "yes"}"#),
            r#"expected one of true, false, "root""#,
        ),
        (s(r#"{"all": false}"#), "must be true"),
        (s(r#"{"all": true, "limit": 0}"#), "positive integer"),
        (s(r#"{"all": true, "limit": -1}"#), "positive integer"),
        (s(r#"{"all": true, "order": "oldest"}"#), "unknown order"),
        (
            s(r#"{"all": true, "include_superusers": 1}"#),
            "true or false",
        ),
        (
            s(r#"{"any": {"usename": "x"}}"#),
            r#""any" must be an array of filters"#,
        ),
        (s(r#"{"any": []}"#), "must not be an empty array"),
        (
            s(r#"{"any": [{}]}"#),
            r#"filter at "any[0]" has no criterion"#,
        ),
        (
            s(r#"{"any": [{"all": true, "limit": 1}]}"#),
            "only allowed at the top level",
        ),
        (
            s(r#"{"exclude": "x"}"#),
            r#""exclude" must be a filter object"#,
        ),
        // jsonb keeps only the last of duplicate keys, so the surviving value is what is judged.
        (
            s(r#"{"pid": 1, "pid": "x"}"#),
            r#""pid" must be an integer"#,
        ),
        (Some(nested_any), "nested too deeply"),
        (Some(deep_array), "not valid JSON"),
        (Some(huge_string), "the limit is 65536 bytes"),
        (Some(long_string), "the limit is 4096"),
        (Some(many_pids), "the limit is 10000"),
    ]
}

#[test]
fn every_bad_filter_is_refused_and_nothing_is_signalled() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("refusals");
    let idle = cluster.session("app", &tag);
    let (busy, query) = cluster.session("app", &tag).busy(&cluster);
    let mut me = cluster.superuser();
    let calls = [
        "reaper.preview_matching($1::text::jsonb)",
        "reaper.cancel_matching($1::text::jsonb)",
        "reaper.terminate_matching($1::text::jsonb, 1000)",
        "reaper.cancel_then_terminate($1::text::jsonb, 100, 1000)",
    ];
    let cases = catalogue();
    let mut slowest = Duration::ZERO;
    let mut checked = 0;
    for (filter, needle) in &cases {
        for f in calls {
            let started = Instant::now();
            let result = match filter {
                Some(text) => me.query(&format!("SELECT pid FROM {f}"), &[text]),
                None => me.query(
                    &format!("SELECT pid FROM {}", f.replace("$1::text::jsonb", "NULL")),
                    &[],
                ),
            };
            slowest = slowest.max(started.elapsed());
            let err = result.expect_err(&format!("{f} accepted {filter:?}"));
            let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
            assert_eq!(
                db.code().code(),
                "22023",
                "{f} {filter:?}: {}",
                db.message()
            );
            assert!(
                db.message().contains(needle),
                "{f} {filter:?}: {:?} lacks {needle:?}",
                db.message()
            );
            checked += 1;
        }
        let validated = match filter {
            Some(text) => me.query("SELECT reaper.validate_filter($1::text::jsonb)", &[text]),
            None => me.query("SELECT reaper.validate_filter(NULL)", &[]),
        };
        assert_eq!(
            validated.unwrap_err().code().map(|c| c.code()),
            Some("22023")
        );
        checked += 1;
    }
    // The other arguments.
    let good = format!(r#"{{"application_name": "{tag}"}}"#);
    for (sql, needle) in [
        (
            "SELECT * FROM reaper.terminate_matching($1::text::jsonb, -1)",
            "timeout_ms must not be negative",
        ),
        (
            "SELECT * FROM reaper.terminate_matching($1::text::jsonb, NULL)",
            "timeout_ms must not be NULL",
        ),
        (
            "SELECT * FROM reaper.cancel_then_terminate($1::text::jsonb, -5)",
            "grace_ms must not be negative",
        ),
        (
            "SELECT * FROM reaper.cancel_then_terminate($1::text::jsonb, NULL)",
            "grace_ms must not be NULL",
        ),
        (
            "SELECT * FROM reaper.cancel_then_terminate($1::text::jsonb, 10, -1)",
            "timeout_ms must not be negative",
        ),
    ] {
        let err = me.query(sql, &[&good]).unwrap_err();
        let db = err.as_db_error().unwrap();
        assert_eq!(db.code().code(), "22023", "{sql}");
        assert!(db.message().contains(needle), "{sql}: {}", db.message());
        checked += 1;
    }
    for (sql, code) in [
        ("SELECT * FROM reaper.run_policy(NULL)", "22023"),
        // Not bad input but a missing object: undefined_object.
        ("SELECT * FROM reaper.run_policy('no such policy')", "42704"),
        ("SELECT reaper.purge_log(NULL)", "22023"),
        ("SELECT reaper.purge_log('-1 day')", "22023"),
    ] {
        let err = me.query(sql, &[]).unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some(code), "{sql}: {err}");
        checked += 1;
    }

    assert!(
        query.still_running_after(Duration::from_millis(50)),
        "the busy query was touched"
    );
    assert_eq!(idle.run("SELECT 1"), Ended::Ok);
    assert!(cluster.alive(busy.pid));
    let logged: i64 = count(&mut me, "SELECT count(*) FROM reaper.log");
    assert_eq!(logged, 0, "nothing was signalled, nothing logged");
    assert!(
        // A bound that only an exponential blow-up could break; the figure itself is reported.
        slowest < Duration::from_secs(10),
        "slowest refusal took {slowest:?}"
    );
    assert!(cases.len() >= 40);
    record_figures(
        "30-bad-input",
        &format!(
            "## Bad input\n\n{} invalid filters, each given to preview_matching, cancel_matching, \
             terminate_matching, cancel_then_terminate and validate_filter, plus 9 bad arguments: \
             {checked} refused calls, every one with SQLSTATE 22023 and a message naming the problem; \
             the two target sessions (one idle, one running a query) were untouched and nothing was \
             logged. Slowest refusal: {:.1} ms (the largest input is a 1 MiB filter).\n\n\
             Bounds (documented in the README): filter text 64 KiB, `any`/`exclude` nesting 8, \
             strings 4 KiB, arrays 10,000 items, compiled regex 1 MiB, JSON nesting 128.\n",
            cases.len(),
            slowest.as_secs_f64() * 1000.0
        ),
    );
}

#[test]
fn a_pathological_regex_runs_in_linear_time() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("redos");
    // A query text of 1000 a's and a final '!': exponential for backtracking engines.
    let text = format!("SELECT '{}!', pg_sleep(600)", "a".repeat(1000));
    let session = cluster.session("app", &tag);
    let _pending = session.start(&text);
    cluster.wait_until(session.pid, "a.state = 'active'");
    let mut me = cluster.superuser();
    let started = Instant::now();
    for pattern in ["(a+)+!x", "^(a|a)*$", "(a*)*b", "(.*a){20}z"] {
        let filter =
            format!(r#"{{"application_name": "{tag}", "query": {{"regex": "{pattern}"}}}}"#);
        assert!(preview(&mut me, &filter).is_empty(), "{pattern}");
    }
    // A bound that only an exponential blow-up could break (backtracking engines take hours).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}
