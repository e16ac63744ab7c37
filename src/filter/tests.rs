//! Unit tests: every key, every form, every refusal.

use serde_json::{json, Value};

use super::*;

const NOW: i64 = 1_000_000_000_000;
const SEC: i64 = 1_000_000;
const CTX: MatchContext = MatchContext {
    self_pid: 1,
    now: NOW,
};

fn parse(v: Value) -> Filter {
    Filter::from_value(&v, &Vocabulary::default())
        .unwrap_or_else(|e| panic!("{v} should parse: {e}"))
}

fn err(v: Value) -> String {
    match Filter::from_value(&v, &Vocabulary::default()) {
        Ok(f) => panic!("{v} should be refused, parsed as {:?}", f.to_json()),
        Err(e) => e.to_string(),
    }
}

fn session(pid: i32) -> Session {
    Session {
        pid,
        backend_type: Some("client backend".into()),
        usename: Some("app".into()),
        datname: Some("shop".into()),
        application_name: Some("web".into()),
        client_hostname: None,
        state: Some("idle".into()),
        wait_event_type: Some("Client".into()),
        wait_event: Some("ClientRead".into()),
        query: Some("SELECT 1".into()),
        client_addr: Some("10.1.2.3".parse().unwrap()),
        client_port: Some(5000),
        client_backend: true,
        backend_start: Some(NOW - 3_600 * SEC),
        xact_start: None,
        query_start: Some(NOW - 60 * SEC),
        state_change: Some(NOW - 30 * SEC),
        superuser: false,
        blocking: false,
        blocked: false,
    }
}

fn matches(filter: Value, s: &Session) -> bool {
    parse(filter).matches(s, &CTX)
}

#[test]
fn text_keys_in_all_three_forms() {
    let s = session(10);
    for (key, value) in [
        ("usename", "app"),
        ("datname", "shop"),
        ("application_name", "web"),
        ("state", "idle"),
        ("backend_type", "client backend"),
        ("wait_event_type", "Client"),
        ("wait_event", "ClientRead"),
        ("query", "SELECT 1"),
    ] {
        assert!(matches(json!({ key: value }), &s), "{key} exact");
        let miss = match key {
            "state" => "active",
            "backend_type" => "walsender",
            _ => "nope",
        };
        assert!(matches(json!({ key: [miss, value] }), &s), "{key} array");
        assert!(matches(json!({ key: {"regex": "^."} }), &s), "{key} regex");
        assert!(!matches(json!({ key: miss }), &s), "{key} exact miss");
        assert!(
            !matches(json!({ key: {"regex": "^zzz"} }), &s),
            "{key} regex miss"
        );
    }
    // client_hostname is NULL here: NULL never matches, not even an all-matching regex.
    assert!(!matches(json!({"client_hostname": {"regex": ""}}), &s));
}

#[test]
fn exact_states_and_backend_types_are_the_servers() {
    let v15 = Vocabulary::default();
    let e = Filter::from_value(&json!({"backend_type": "walsnder"}), &v15).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"filter key "backend_type": PostgreSQL 15 has no backend type "walsnder" (did you mean "walsender"?)"#
    );
    // Another major's type is refused; the server that has it accepts it.
    assert!(Filter::from_value(&json!({"backend_type": "io worker"}), &v15).is_err());
    let mut v18 = v15.clone();
    v18.server = "PostgreSQL 18".into();
    v18.backend_types.push("io worker".into());
    v18.states.push("starting".into());
    assert!(Filter::from_value(&json!({"backend_type": ["io worker"]}), &v18).is_ok());
    assert!(Filter::from_value(&json!({"state": "starting"}), &v15).is_err());
    assert!(Filter::from_value(&json!({"state": "starting"}), &v18).is_ok());
    // A regex is not checked: it may name any type.
    assert!(Filter::from_value(&json!({"backend_type": {"regex": "worker$"}}), &v15).is_ok());
    // Known background workers are accepted anywhere.
    assert!(Filter::from_value(&json!({"backend_type": "pg_cron launcher"}), &v15).is_ok());
}

#[test]
fn regex_is_unanchored_and_case_sensitive_unless_asked() {
    let mut s = session(10);
    s.query = Some("select * from orders where id = 1".into());
    assert!(matches(json!({"query": {"regex": "orders"}}), &s));
    assert!(!matches(json!({"query": {"regex": "ORDERS"}}), &s));
    assert!(matches(json!({"query": {"regex": "(?i)ORDERS"}}), &s));
}

#[test]
fn client_addr_forms() {
    let tcp = session(10);
    let mut local = session(11);
    local.client_addr = None;
    local.client_port = Some(-1);
    let mut bgworker = session(12);
    bgworker.client_addr = None;
    bgworker.client_port = None;
    let mut v6 = session(13);
    v6.client_addr = Some("::1".parse().unwrap());
    let mut mapped = session(14);
    mapped.client_addr = Some("::ffff:10.9.9.9".parse().unwrap());

    assert!(matches(json!({"client_addr": "10.1.2.3"}), &tcp));
    assert!(matches(json!({"client_addr": "10.0.0.0/8"}), &tcp));
    assert!(!matches(json!({"client_addr": "192.168.0.0/16"}), &tcp));
    assert!(!matches(json!({"client_addr": "local"}), &tcp));
    assert!(matches(json!({"client_addr": "local"}), &local));
    assert!(!matches(json!({"client_addr": "local"}), &bgworker));
    assert!(!matches(json!({"client_addr": "0.0.0.0/0"}), &local));
    assert!(matches(json!({"client_addr": "::1"}), &v6));
    assert!(matches(json!({"client_addr": "::/0"}), &v6));
    assert!(!matches(json!({"client_addr": "0.0.0.0/0"}), &v6));
    assert!(matches(json!({"client_addr": "10.0.0.0/8"}), &mapped));
    assert!(matches(
        json!({"client_addr": ["local", "10.1.2.3"]}),
        &local
    ));
    assert!(matches(json!({"client_addr": ["local", "10.1.2.3"]}), &tcp));
}

#[test]
fn pid_forms() {
    let s = session(4242);
    assert!(matches(json!({"pid": 4242}), &s));
    assert!(matches(json!({"pid": [1, 4242]}), &s));
    assert!(!matches(json!({"pid": 4243}), &s));
    assert!(!matches(json!({"pid": [7, 8]}), &s));
}

#[test]
fn ages_in_milliseconds_and_intervals() {
    let s = session(10); // backend 1 h, query 60 s, state 30 s, no transaction
    assert!(matches(json!({"min_backend_age": "59 minutes"}), &s));
    assert!(!matches(json!({"min_backend_age": "61 minutes"}), &s));
    assert!(matches(json!({"min_query_age": 60_000}), &s));
    assert!(!matches(json!({"min_query_age": 60_001}), &s));
    assert!(matches(json!({"min_state_age": "00:00:30"}), &s));
    assert!(!matches(json!({"min_state_age": "31s"}), &s));
    // A NULL timestamp never matches, not even an age of 0.
    assert!(!matches(json!({"min_xact_age": 0}), &s));
}

#[test]
fn blocking_and_blocked() {
    let mut holder = session(10);
    holder.blocking = true;
    let mut waiter = session(11);
    waiter.blocked = true;
    assert!(matches(json!({"blocking": true}), &holder));
    assert!(!matches(json!({"blocking": true}), &waiter));
    assert!(matches(json!({"blocked": true}), &waiter));
    assert!(!matches(json!({"blocked": true}), &holder));
    assert!(matches(json!({"blocked": false}), &holder));
}

#[test]
fn any_exclude_and_all() {
    let s = session(10);
    assert!(matches(
        json!({"any": [{"usename": "x"}, {"datname": "shop"}]}),
        &s
    ));
    assert!(!matches(
        json!({"any": [{"usename": "x"}, {"datname": "y"}]}),
        &s
    ));
    assert!(!matches(
        json!({"all": true, "exclude": {"application_name": "web"}}),
        &s
    ));
    assert!(matches(
        json!({"all": true, "exclude": {"application_name": "psql"}}),
        &s
    ));
    assert!(matches(json!({"all": true}), &s));
    // Everything present must hold.
    assert!(!matches(json!({"usename": "app", "datname": "other"}), &s));
}

#[test]
fn safety_defaults() {
    let me = session(CTX.self_pid);
    assert!(!matches(json!({"all": true}), &me), "never self");
    assert!(!matches(json!({"pid": CTX.self_pid}), &me), "never self");

    let mut su = session(20);
    su.superuser = true;
    assert!(!matches(json!({"all": true}), &su));
    assert!(matches(
        json!({"all": true, "include_superusers": true}),
        &su
    ));

    let mut walsender = session(21);
    walsender.backend_type = Some("walsender".into());
    walsender.client_backend = false;
    assert!(!matches(json!({"all": true}), &walsender));
    assert!(!matches(json!({"usename": "app"}), &walsender));
    assert!(matches(json!({"backend_type": "walsender"}), &walsender));
    assert!(matches(
        json!({"backend_type": {"regex": "wal"}}),
        &walsender
    ));
    // Naming the type in one branch of `any` does not open the other branches to it.
    assert!(matches(
        json!({"any": [{"backend_type": "walsender"}, {"usename": "x"}]}),
        &walsender
    ));
    assert!(!matches(
        json!({"any": [{"backend_type": "parallel worker"}, {"usename": "app"}]}),
        &walsender
    ));

    let mut cron = session(22);
    cron.backend_type = Some("pg_cron launcher".into());
    cron.client_backend = false;
    cron.superuser = true;
    let everything = json!({"backend_type": {"regex": ""}, "include_superusers": true});
    assert!(!matches(everything, &cron), "regex never selects pg_cron");
    assert!(matches(
        json!({"backend_type": "pg_cron launcher", "include_superusers": true}),
        &cron
    ));

    // Another role's session, seen without privileges: backend_type is hidden (NULL), but it
    // is known to be a client backend, so it can be selected (and then PostgreSQL decides).
    let mut hidden = session(23);
    hidden.backend_type = None;
    hidden.state = None;
    assert!(matches(json!({"usename": "app"}), &hidden));
    assert!(!matches(
        json!({"usename": "app", "state": "idle"}),
        &hidden
    ));
    let mut hidden_walsender = hidden.clone();
    hidden_walsender.client_backend = false;
    assert!(!matches(json!({"usename": "app"}), &hidden_walsender));
    assert!(!matches(
        json!({"backend_type": {"regex": ""}}),
        &hidden_walsender
    ));
}

#[test]
fn limit_and_order() {
    let mut sessions: Vec<Session> = (0..5).map(|i| session(100 + i)).collect();
    for (i, s) in sessions.iter_mut().enumerate() {
        let i = i as i64;
        s.backend_start = Some(NOW - (10 - i) * SEC); // 100 is the oldest backend
        s.xact_start = Some(NOW - (i + 1) * SEC); // 104 has the oldest transaction
        s.query_start = if i == 2 { None } else { Some(NOW - i * SEC) };
        s.state_change = Some(NOW - (i % 3) * SEC);
    }
    let pids = |f: Value| -> Vec<i32> {
        parse(f)
            .select(&sessions, &CTX)
            .into_iter()
            .map(|i| sessions[i].pid)
            .collect()
    };
    assert_eq!(pids(json!({"all": true})), vec![100, 101, 102, 103, 104]);
    assert_eq!(pids(json!({"all": true, "limit": 2})), vec![100, 101]);
    assert_eq!(
        pids(json!({"all": true, "limit": 2, "order": "newest_backend"})),
        vec![104, 103]
    );
    assert_eq!(
        pids(json!({"all": true, "limit": 1, "order": "oldest_xact"})),
        vec![104]
    );
    // NULL query_start sorts last.
    assert_eq!(
        pids(json!({"all": true, "order": "oldest_query"})),
        vec![104, 103, 101, 100, 102]
    );
    assert_eq!(
        pids(json!({"all": true, "limit": 2, "order": "oldest_state"})),
        vec![102, 101]
    );
    assert_eq!(pids(json!({"all": true, "limit": 99})).len(), 5);
}

#[test]
fn refusals_name_the_problem() {
    let cases: Vec<(Value, &str)> = vec![
        (json!(null), "must not be NULL"),
        (json!([]), "must be a JSON object, not an array"),
        (json!("x"), "not a string"),
        (json!(1), "not a number"),
        (json!({}), "no criterion"),
        (
            json!({"aplication_name": "x"}),
            "did you mean \"application_name\"",
        ),
        (json!({"usernam": "x"}), "did you mean \"usename\""),
        (
            json!({"bogus_key_entirely": 1}),
            "unknown filter key \"bogus_key_entirely\"",
        ),
        (json!({"usename": 1}), "\"usename\" must be a string"),
        (json!({"usename": [1]}), "\"usename[0]\" must be a string"),
        (
            json!({"usename": [null]}),
            "\"usename[0]\" must be a string, not null",
        ),
        (json!({"usename": []}), "must not be an empty array"),
        (
            json!({"usename": {"regexp": "x"}}),
            "did you mean \"regex\"",
        ),
        (json!({"usename": {"regex": 1}}), "usename.regex"),
        (json!({"query": {"regex": "("}}), "invalid regex"),
        (json!({"query": {"regex": "(a)\\1"}}), "invalid regex"),
        (
            json!({"state": "idle in transation"}),
            "did you mean \"idle in transaction\"",
        ),
        (json!({"client_addr": "10.0.0/33"}), "not an IP address"),
        (json!({"client_addr": "10.0.0.0/33"}), "not an IP address"),
        (
            json!({"client_addr": 10}),
            "\"client_addr\" must be an address",
        ),
        (json!({"pid": "12"}), "\"pid\" must be an integer"),
        (json!({"pid": 1.5}), "not a fractional number"),
        (json!({"pid": 0}), "out of range"),
        (json!({"pid": -3}), "out of range"),
        (json!({"pid": 3_000_000_000u64}), "out of range"),
        (json!({"pid": [1, "2"]}), "\"pid[1]\" must be an integer"),
        (json!({"min_state_age": -5}), "must not be negative"),
        (
            json!({"min_state_age": "-5 minutes"}),
            "must not be negative",
        ),
        (json!({"min_state_age": "5 minuts"}), "not a valid interval"),
        (json!({"min_state_age": true}), "interval string"),
        (
            json!({"min_query_age": 9_223_372_036_854_775_807i64}),
            "out of range",
        ),
        (json!({"blocking": "yes"}), "true or false"),
        (json!({"all": false}), "must be true"),
        (json!({"all": true, "limit": 0}), "positive integer"),
        (json!({"all": true, "limit": -1}), "positive integer"),
        (json!({"all": true, "limit": "1"}), "positive integer"),
        (json!({"all": true, "order": "oldest"}), "unknown order"),
        (
            json!({"all": true, "order": "newest_backnd"}),
            "did you mean \"newest_backend\"",
        ),
        (
            json!({"any": {"usename": "x"}}),
            "\"any\" must be an array of filters",
        ),
        (json!({"any": []}), "must not be an empty array"),
        (json!({"any": [1]}), "\"any[0]\" must be a filter object"),
        (
            json!({"any": [{}]}),
            "filter at \"any[0]\" has no criterion",
        ),
        (
            json!({"any": [{"all": true, "limit": 1}]}),
            "\"any[0].limit\" is only allowed at the top level",
        ),
        (
            json!({"exclude": [1]}),
            "\"exclude\" must be a filter object",
        ),
        (json!({"exclude": {"usename": "x"}}), "no criterion"),
        (
            json!({"all": true, "include_superusers": "yes"}),
            "true or false",
        ),
        (
            json!({"usename": "x".repeat(MAX_STRING_BYTES + 1)}),
            "the limit is 4096",
        ),
    ];
    for (filter, needle) in cases {
        let message = err(filter.clone());
        assert!(
            message.contains(needle),
            "{filter}: {message:?} lacks {needle:?}"
        );
    }
}

#[test]
fn nesting_is_bounded() {
    let mut f = json!({"usename": "x"});
    for _ in 0..=MAX_NESTING {
        f = json!({"any": [f]});
    }
    assert!(err(f).contains("nested too deeply"));
    let mut ok = json!({"usename": "x"});
    for _ in 0..MAX_NESTING {
        ok = json!({"exclude": ok, "all": true});
    }
    parse(ok);
}

#[test]
fn text_level_refusals() {
    let too_big = format!("{{\"usename\": \"{}\"}}", "x".repeat(MAX_FILTER_BYTES));
    assert!(matches!(
        Filter::parse_str(&too_big, &Vocabulary::default()),
        Err(FilterError::TooLarge { .. })
    ));
    assert_eq!(
        Filter::parse_str(r#"{"pid": 1, "pid": 2}"#, &Vocabulary::default()).unwrap_err(),
        FilterError::DuplicateKey { key: "pid".into() }
    );
    let deep = format!("{{\"usename\": {}1{}}}", "[".repeat(200), "]".repeat(200));
    assert!(matches!(
        Filter::parse_str(&deep, &Vocabulary::default()),
        Err(FilterError::InvalidJson(_))
    ));
    assert!(matches!(
        Filter::parse_str("{", &Vocabulary::default()),
        Err(FilterError::InvalidJson(_))
    ));
    assert!(matches!(
        Filter::parse_str(r#"{"pid": 1e400}"#, &Vocabulary::default()),
        Err(FilterError::InvalidJson(_))
    ));
    assert!(Filter::parse_str(r#"{"pid": 1}"#, &Vocabulary::default()).is_ok());
}

#[test]
fn pathological_regex_is_linear() {
    let mut s = session(10);
    s.query = Some(format!("{}!", "a".repeat(4000)));
    let started = std::time::Instant::now();
    assert!(!matches(json!({"query": {"regex": "^(a+)+$"}}), &s));
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn normalized_form_spells_out_defaults_and_round_trips() {
    let f = parse(json!({
        "usename": ["a", "b"],
        "min_state_age": "5 minutes",
        "client_addr": "10.1.2.3/8",
        "exclude": {"application_name": {"regex": "^psql"}},
        "limit": 3
    }));
    let normal = f.to_json();
    assert_eq!(
        normal,
        json!({
            "usename": ["a", "b"],
            "min_state_age": 300_000,
            "client_addr": "10.0.0.0/8",
            "exclude": {"application_name": {"regex": "^psql"}},
            "include_superusers": false,
            "order": "oldest_backend",
            "limit": 3
        })
    );
    assert_eq!(parse(normal.clone()).to_json(), normal);
}
