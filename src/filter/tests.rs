//! Unit tests: every key, every form, every refusal.

use serde_json::{json, Value};

use super::*;

const NOW: i64 = 1_000_000_000_000;
const SEC: i64 = 1_000_000;
static NO_PROTECTION: Protected = Protected {
    applications: Vec::new(),
    roles: Vec::new(),
};
const CTX: MatchContext = MatchContext {
    self_pid: 1,
    now: NOW,
    protected: &NO_PROTECTION,
    interrupt: no_interrupt,
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
        hidden: false,
        locks: LockFacts::default(),
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
    holder.locks.blocking = true;
    holder.locks.blocked_sessions = 1;
    let mut waiter = session(11);
    waiter.locks.blocked = true;
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
            .victims
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
        (
            json!({"blocking": "yes"}),
            "unknown blocking \"yes\" (expected one of true, false, \"root\")",
        ),
        (json!({"blocking": 1}), "must be true, false or \"root\""),
        (
            json!({"blocking": "roots"}),
            "(did you mean \"root\"?)",
        ),
        (
            json!({"min_blocked_sessions": 0}),
            "\"min_blocked_sessions\": 0 is out of range (it must be a positive integer",
        ),
        (
            json!({"min_blocked_sessions": "2"}),
            "must be a positive integer, not a string",
        ),
        (
            json!({"min_blocking_age": -1}),
            "\"min_blocking_age\" must not be negative",
        ),
        (
            json!({"min_blocked_age": "soon"}),
            "\"min_blocked_age\": \"soon\" is not a valid interval",
        ),
        (
            json!({"all": true, "keep": 0}),
            "\"keep\": 0 is out of range (it must be a positive integer, at most 1000000)",
        ),
        (
            json!({"all": true, "keep": 1.5}),
            "\"keep\" must be a positive integer, not a fractional number",
        ),
        (
            json!({"all": true, "per": ["usename"]}),
            "filter key \"per\" needs \"keep\"",
        ),
        (
            json!({"all": true, "keep": 1, "per": ["usename", "usename"]}),
            "\"per[1]\" names \"usename\" more than once",
        ),
        (
            json!({"all": true, "keep": 1, "per": ["aplication_name"]}),
            "unknown column \"aplication_name\" (expected one of usename, datname, application_name, client_addr) (did you mean \"application_name\"?)",
        ),
        (
            json!({"all": true, "keep": 1, "per": []}),
            "\"per\" must not be an empty array",
        ),
        (
            json!({"any": [{"all": true, "keep": 1}]}),
            "\"any[0].keep\" is only allowed at the top level",
        ),
        (
            json!({"exclude": {"usename": "x", "include_protected": true}, "all": true}),
            "\"exclude.include_protected\" is only allowed at the top level",
        ),
        (
            json!({"all": true, "include_protected": "yes"}),
            "\"include_protected\" must be true or false",
        ),
        (
            json!({"all": true, "order": "newest_transaction"}),
            "expected one of oldest_backend, newest_backend, oldest_xact, newest_xact, oldest_query, newest_query, oldest_state, newest_state",
        ),
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
            "include_protected": false,
            "order": "oldest_backend",
            "limit": 3
        })
    );
    assert_eq!(parse(normal.clone()).to_json(), normal);
}

/// `pg_blocking_pids` lists, as a replay gives them: (pid, blocked_by, wait_start), each pid its
/// own lock group.
fn lists(waits: &[(i32, &[i32], Option<i64>)]) -> Waits {
    Waits {
        waiting: waits
            .iter()
            .filter(|(pid, by, _)| by.iter().any(|b| b != pid))
            .map(|&(pid, _, wait_start)| WaitingProcess {
                pid,
                group: pid,
                wait_start,
            })
            .collect(),
        lists: waits
            .iter()
            .map(|(pid, by, _)| (*pid, by.to_vec()))
            .collect(),
        queues: Vec::new(),
    }
}

/// Sessions 1..=n with lock facts worked out from (pid, blocked_by, wait_start) by the chains.
const EVERYTHING: ChainNeeds = ChainNeeds {
    count_up_to: Some(u32::MAX),
    longest_wait_behind: true,
    holding_up: true,
};

fn with_chains(waits: &[(i32, &[i32], Option<i64>)], n: i32) -> Vec<Session> {
    let chains = LockChains::new(lists(waits), EVERYTHING, &mut || {});
    (2..=n + 1)
        .map(|pid| {
            let mut s = session(pid);
            s.locks = chains.facts(pid);
            s
        })
        .collect()
}

fn chosen(f: Value, sessions: &[Session]) -> Vec<i32> {
    parse(f)
        .select(sessions, &CTX)
        .victims
        .into_iter()
        .map(|i| sessions[i].pid)
        .collect()
}

#[test]
fn lock_chains_root_depth_and_ages() {
    // 2 <- 3 <- 4 (4 waits for 3, which waits for 2), and 5 <- 6; 3 waits since 40 s, 4 since
    // 10 s, 6 since 5 s.
    let sessions = with_chains(
        &[
            (3, &[2], Some(NOW - 40 * SEC)),
            (4, &[3], Some(NOW - 10 * SEC)),
            (6, &[5], Some(NOW - 5 * SEC)),
        ],
        5,
    );
    assert_eq!(chosen(json!({"blocking": "root"}), &sessions), vec![2, 5]);
    assert_eq!(chosen(json!({"blocking": true}), &sessions), vec![2, 3, 5]);
    assert_eq!(chosen(json!({"blocking": false}), &sessions), vec![4, 6]);
    assert_eq!(chosen(json!({"blocked": true}), &sessions), vec![3, 4, 6]);
    // Through the chain: 2 holds up 3 and 4, and 3 has waited 40 s.
    assert_eq!(
        chosen(json!({"min_blocked_sessions": 2}), &sessions),
        vec![2]
    );
    assert_eq!(
        chosen(
            json!({"blocking": "root", "min_blocking_age": "30s"}),
            &sessions
        ),
        vec![2]
    );
    assert_eq!(
        chosen(
            json!({"blocking": "root", "min_blocking_age": "4s"}),
            &sessions
        ),
        vec![2, 5]
    );
    assert_eq!(
        chosen(json!({"min_blocking_age": "11s"}), &sessions),
        vec![2]
    );
    assert_eq!(
        chosen(json!({"min_blocked_age": "10s"}), &sessions),
        vec![3, 4]
    );
    // A waiter whose wait has no timestamp yet has no wait age: it never matches an age.
    let sessions = with_chains(&[(3, &[2], None)], 2);
    assert_eq!(
        chosen(json!({"min_blocked_age": 0}), &sessions),
        Vec::<i32>::new()
    );
    assert_eq!(chosen(json!({"blocking": "root"}), &sessions), vec![2]);
}

#[test]
fn a_cycle_has_no_root_and_ends_the_walk() {
    // 2 <- 3 <- 4 <- 2 (a deadlock the detector has not broken yet), and 5 holds up 2 too.
    let sessions = with_chains(
        &[
            (2, &[4, 5], Some(NOW - 20 * SEC)),
            (3, &[2], Some(NOW - 30 * SEC)),
            (4, &[3], Some(NOW - 10 * SEC)),
        ],
        4,
    );
    // Every member is blocked, so none is a root; 5, outside the cycle, is.
    assert_eq!(chosen(json!({"blocking": "root"}), &sessions), vec![5]);
    // Each member holds up the other two (not itself); 5 holds up all three.
    for s in &sessions[..3] {
        assert_eq!(s.locks.blocked_sessions, 2, "{}", s.pid);
    }
    assert_eq!(sessions[3].locks.blocked_sessions, 3);
    assert_eq!(
        chosen(json!({"min_blocked_sessions": 3}), &sessions),
        vec![5]
    );
    assert_eq!(
        chosen(
            json!({"blocking": true, "min_blocking_age": "25s"}),
            &sessions
        ),
        vec![2, 4, 5]
    );
}

#[test]
fn keep_spares_the_first_of_each_group_and_limit_comes_after() {
    let mut sessions: Vec<Session> = (2..=9).map(session).collect();
    for (i, s) in sessions.iter_mut().enumerate() {
        s.backend_start = Some(NOW - (100 - i as i64) * SEC); // 2 is the oldest backend
        s.application_name = Some(if i % 2 == 0 { "a" } else { "b" }.into());
        s.state_change = Some(NOW - (i as i64 % 3) * SEC);
    }
    // "At most 2 per application, the newest kept".
    let f = json!({"all": true, "per": ["application_name"], "keep": 2, "order": "newest_backend"});
    // a: 8, 6 kept; 4, 2 go. b: 9, 7 kept; 5, 3 go. Victims newest first.
    assert_eq!(chosen(f.clone(), &sessions), vec![5, 4, 3, 2]);
    let mut limited = f.clone();
    limited["limit"] = json!(1);
    assert_eq!(chosen(limited, &sessions), vec![5]);
    // Without per, one group.
    assert_eq!(
        chosen(json!({"all": true, "keep": 6}), &sessions),
        vec![8, 9]
    );
    // The other new orders.
    assert_eq!(
        chosen(
            json!({"all": true, "order": "newest_state", "limit": 3}),
            &sessions
        ),
        vec![2, 5, 8]
    );
    assert_eq!(
        chosen(
            json!({"all": true, "keep": 7, "order": "oldest_state"}),
            &sessions
        ),
        vec![8]
    );
    // NULL is a group of its own, as in GROUP BY.
    sessions[0].application_name = None;
    sessions[1].application_name = None;
    assert_eq!(
        chosen(
            json!({"all": true, "per": "application_name", "keep": 1}),
            &sessions
        ),
        vec![3, 6, 7, 8, 9]
    );
}

#[test]
fn protected_tools_and_roles_are_left_unless_the_filter_includes_them() {
    let protected = Protected {
        applications: vec!["pg_dump".into()],
        roles: vec!["backup".into()],
    };
    let ctx = MatchContext {
        protected: &protected,
        ..CTX
    };
    let mut dump = session(2);
    dump.application_name = Some("pg_dump".into());
    let mut backup = session(3);
    backup.usename = Some("backup".into());
    let app = session(4);
    let sessions = vec![dump, backup, app];
    let selection = parse(json!({"all": true})).select(&sessions, &ctx);
    assert_eq!(selection.victims, vec![2]);
    assert_eq!(selection.protected, 2);
    let selection = parse(json!({"all": true, "include_protected": true})).select(&sessions, &ctx);
    assert_eq!(selection.victims, vec![0, 1, 2]);
    assert_eq!(selection.protected, 0);
    // Protected sessions are not part of a quota's groups.
    let selection = parse(json!({"all": true, "keep": 1})).select(&sessions, &ctx);
    assert_eq!(selection.victims, Vec::<usize>::new());
}

#[test]
fn normal_form_of_the_new_keys() {
    let f = parse(json!({
        "blocking": "root", "min_blocking_age": "30s", "min_blocked_sessions": 2,
        "min_blocked_age": 500, "keep": 20, "per": "application_name",
        "order": "newest_backend", "include_protected": true
    }));
    assert_eq!(
        f.to_json(),
        json!({
            "blocking": "root", "min_blocking_age": 30_000, "min_blocked_sessions": 2,
            "min_blocked_age": 500, "keep": 20, "per": ["application_name"],
            "order": "newest_backend", "include_protected": true, "include_superusers": false
        })
    );
}

#[test]
fn name_lists_as_settings_hold_them() {
    assert_eq!(
        name_list(" pg_dump, pg_restore ,,\"my, app\" , \"say \"\"hi\"\"\",Caps "),
        vec!["pg_dump", "pg_restore", "my, app", "say \"hi\"", "Caps"]
    );
    assert_eq!(name_list(""), Vec::<String>::new());
    assert_eq!(
        role_list("Backup, \"Ops Team\", \"CamelCase\""),
        vec!["backup", "Ops Team", "CamelCase"]
    );
    assert_eq!(name_list("\"unterminated"), vec!["unterminated"]);
    // Folded as PostgreSQL folds identifiers (ASCII only), cut as it cuts names (63 bytes, at
    // a character boundary).
    assert_eq!(role_list("Ärger, ADMIN"), vec!["Ärger", "admin"]);
    let long = format!("{}é", "a".repeat(62));
    assert_eq!(name_list(&long), vec!["a".repeat(62)]);
    assert_eq!(role_list(&"B".repeat(70)), vec!["b".repeat(63)]);
}

#[test]
fn timestamps_as_postgresql_writes_them() {
    use replay::parse_timestamp;
    // 2000-01-01 00:00:00 UTC is PostgreSQL's epoch.
    assert_eq!(parse_timestamp("2000-01-01T00:00:00+00:00"), Ok(0));
    assert_eq!(parse_timestamp("2000-01-01 00:00:00+00"), Ok(0));
    assert_eq!(parse_timestamp("2000-01-01T01:00:00Z"), Ok(3_600 * SEC));
    assert_eq!(
        parse_timestamp("2026-11-25T17:55:55.123456+00:00"),
        Ok(848_944_555_123_456)
    );
    assert_eq!(
        parse_timestamp("2026-11-25T19:55:55.12+02:00"),
        Ok(848_944_555_120_000)
    );
    assert_eq!(parse_timestamp("1999-12-31T23:59:59-00:00:01"), Ok(0));
    assert!(parse_timestamp("2024-02-29T00:00:00Z").is_ok());
    for bad in [
        "2023-02-29T00:00:00Z",
        "2026-11-25T17:55:55",
        "2026-11-25",
        "2026-13-01T00:00:00Z",
        "2026-11-25T17:55:55.1234567Z",
        "yesterday",
        "2026-11-25T17:55:55+0",
        "",
    ] {
        assert!(parse_timestamp(bad).is_err(), "{bad}");
    }
}

#[test]
fn replay_matches_json_rows_as_the_live_path_matches_sessions() {
    let rows = json!([
        {"pid": 10, "usesysid": 10, "usename": "app", "application_name": "web",
         "backend_type": "client backend", "state": "idle in transaction",
         "backend_start": "2026-11-25T17:00:00+00:00", "xact_start": "2026-11-25T17:50:00+00:00",
         "state_change": "2026-11-25T17:50:00+00:00", "client_addr": "10.1.2.3", "client_port": 5000,
         "query": "UPDATE t SET x = 1", "blocking_pids": [], "waitstart": null,
         "now": "2026-11-25T18:00:00+00:00"},
        {"pid": 11, "usesysid": 10, "usename": "app", "application_name": "web",
         "backend_type": "client backend", "state": "active", "query": "UPDATE t SET x = 2",
         "backend_start": "2026-11-25T17:10:00+00:00", "blocking_pids": [10],
         "waitstart": "2026-11-25T17:59:00+00:00", "now": "2026-11-25T18:00:00+00:00"},
        {"pid": 12, "usesysid": null, "usename": null, "backend_type": "checkpointer",
         "blocking_pids": null, "now": "2026-11-25T18:00:00+00:00"},
        {"pid": 13, "usesysid": 20, "usename": "other", "application_name": "x",
         "backend_type": null, "state": null, "query": "<insufficient privilege>",
         "blocking_pids": [], "now": "2026-11-25T18:00:00+00:00"}
    ]);
    let run = |f: Value| -> Vec<(i32, bool)> {
        replay::replay(&parse(f), &rows, None, &NO_PROTECTION, no_interrupt).unwrap()
    };
    let matched = |f: Value| -> Vec<i32> {
        run(f)
            .into_iter()
            .filter(|(_, m)| *m)
            .map(|(p, _)| p)
            .collect()
    };
    assert_eq!(
        run(json!({"blocking": "root", "min_blocking_age": "30s"})),
        vec![(10, true), (11, false), (12, false), (13, false)]
    );
    assert_eq!(matched(json!({"min_xact_age": "10 minutes"})), vec![10]);
    assert_eq!(
        matched(json!({"min_xact_age": "10 minutes 1 second"})),
        Vec::<i32>::new()
    );
    // The hidden row is matched on NULLs, never on its placeholder, and is a client backend.
    assert_eq!(
        matched(json!({"query": {"regex": "insufficient"}})),
        Vec::<i32>::new()
    );
    assert_eq!(matched(json!({"usename": "other"})), vec![13]);
    // A process with no role counts as a superuser's.
    assert_eq!(
        matched(json!({"backend_type": "checkpointer"})),
        Vec::<i32>::new()
    );
    assert_eq!(
        matched(json!({"backend_type": "checkpointer", "include_superusers": true})),
        vec![12]
    );
    // "now" as an argument overrides the rows'.
    let later = replay::parse_timestamp("2026-11-25T19:00:00Z").unwrap();
    let r = replay::replay(
        &parse(json!({"min_xact_age": "70 minutes"})),
        &rows,
        Some(later),
        &NO_PROTECTION,
        no_interrupt,
    )
    .unwrap();
    assert_eq!(r[0], (10, true));
}

#[test]
fn replay_refuses_what_it_cannot_read() {
    let f = parse(json!({"blocking": true}));
    let ages = parse(json!({"min_state_age": 1}));
    let all = parse(json!({"all": true}));
    let cases: Vec<(&Filter, Value, &str)> = vec![
        (
            &all,
            json!({"pid": 1}),
            "sessions must be a JSON array of pg_stat_activity rows, not an object",
        ),
        (
            &all,
            json!([1]),
            "sessions[0] must be a JSON object (a pg_stat_activity row), not a number",
        ),
        (&all, json!([{"usename": "x"}]), "sessions[0] has no pid"),
        (
            &all,
            json!([{"pid": "1"}]),
            "sessions[0].pid must be an integer or null, not a string",
        ),
        (
            &all,
            json!([{"pid": 1, "usename": 5}]),
            "sessions[0].usename must be a string or null, not a number",
        ),
        (
            &all,
            json!([{"pid": 1, "backend_start": "noon"}]),
            "sessions[0].backend_start: \"noon\" is not a timestamp",
        ),
        (
            &all,
            json!([{"pid": 1, "client_addr": "here"}]),
            "sessions[0].client_addr: \"here\" is not an IP address",
        ),
        (
            &f,
            json!([{"pid": 1, "blocking_pids": []}, {"pid": 2}]),
            "sessions[1] has no \"blocking_pids\"",
        ),
        (
            &f,
            json!([{"pid": 1, "blocking_pids": ["x"]}]),
            "sessions[0].blocking_pids must be an array of pids",
        ),
        (&ages, json!([{"pid": 1}]), "sessions[0] has no \"now\""),
        (
            &all,
            json!([{"pid": 1, "superuser": "no"}]),
            "sessions[0].superuser must be a boolean or null",
        ),
    ];
    for (filter, sessions, needle) in cases {
        let message = replay::replay(filter, &sessions, None, &NO_PROTECTION, no_interrupt)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(needle),
            "{sessions}: {message:?} lacks {needle:?}"
        );
    }
}

#[test]
fn replay_refuses_captures_over_its_limits() {
    let all = parse(json!({"all": true}));
    let locks = parse(json!({"blocking": true}));
    let run = |f: &Filter, sessions: Value| {
        replay::replay(f, &sessions, None, &NO_PROTECTION, no_interrupt)
            .unwrap_err()
            .to_string()
    };
    let too_many: Vec<Value> = (1..=replay::MAX_SESSIONS as i64 + 1)
        .map(|pid| json!({ "pid": pid }))
        .collect();
    assert_eq!(
        run(&all, Value::Array(too_many)),
        "sessions has 16385 rows; the limit is 16384"
    );
    let half: Vec<i64> = (10..10 + replay::MAX_WAITS as i64 / 2 + 1).collect();
    assert_eq!(
        run(
            &locks,
            json!([{"pid": 1, "blocking_pids": half}, {"pid": 2, "blocking_pids": half}])
        ),
        "sessions has 1000002 blocking_pids entries in all; the limit is 1000000"
    );
    // The shape is read from the text, before any parsing, strings skipped: a query full of
    // brackets and commas counts as one value.
    let brackets = "[{,:".repeat(replay::MAX_SESSIONS_STRING_BYTES / 4 - 1);
    let quoted = serde_json::to_string(&brackets).unwrap();
    assert!(replay::check_size(&format!(r#"[{{"pid": 1, "query": {quoted}}}]"#)).is_ok());
    // One string is bounded too: a filter's regexes are linear in the text they scan.
    let long = serde_json::to_string(&"a".repeat(3 << 20)).unwrap();
    assert_eq!(
        replay::check_size(&format!(r#"[{{"pid": 1, "query": {long}}}]"#))
            .unwrap_err()
            .to_string(),
        "sessions is too large: 3145729 bytes in one string; the limit is 2097152"
    );
    let wide = format!("[{}]", vec!["0"; replay::MAX_SESSIONS_VALUES].join(","));
    assert_eq!(
        replay::check_size(&wide).unwrap_err().to_string(),
        "sessions is too large: 2000001 JSON values; the limit is 2000000"
    );
    let objects = format!("[{}]", vec!["{}"; replay::MAX_SESSIONS + 1].join(","));
    assert_eq!(
        replay::check_size(&objects).unwrap_err().to_string(),
        "sessions is too large: 16385 objects; the limit is 16384"
    );
    let deep = format!(
        "{}{}",
        "[".repeat(replay::MAX_SESSIONS + 2),
        "]".repeat(replay::MAX_SESSIONS + 2)
    );
    assert_eq!(
        replay::check_size(&deep).unwrap_err().to_string(),
        "sessions is too large: 16386 arrays; the limit is 16385"
    );
    let row = format!(
        "{{{}}}",
        (0..65)
            .map(|i| format!(r#""c{i}": 0"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let fields = format!("[{}]", vec![row.as_str(); replay::MAX_SESSIONS].join(","));
    assert_eq!(
        replay::check_size(&fields).unwrap_err().to_string(),
        "sessions is too large: 1064960 object fields; the limit is 1048576"
    );
}

#[test]
fn replay_counts_a_parallel_querys_sessions_as_one_lock_group() {
    // 3 holds the lock; the leader 4 has waited 60 s, its worker 5 only 1 s: the group waits
    // since 60 s, so the worker's wait is as old as its leader's, as pg_locks-based code and the
    // live path count it.
    let capture: Vec<Value> = [
        json!({"pid": 3, "blocking_pids": []}),
        json!({"pid": 4, "leader_pid": null, "blocking_pids": [3], "waitstart": "2026-11-25T12:00:00Z"}),
        json!({"pid": 5, "leader_pid": 4, "blocking_pids": [3], "waitstart": "2026-11-25T12:00:59Z"}),
        json!({"pid": 6, "blocking_pids": [3], "waitstart": "2026-11-25T12:00:59Z"}),
        // A parallel apply worker names its leader too, but shares no locks with it.
        json!({"pid": 7, "leader_pid": 4, "blocking_pids": [3], "waitstart": "2026-11-25T12:00:59Z",
               "backend_type": "logical replication parallel worker"}),
    ]
    .into_iter()
    .map(|mut row| {
        row["usesysid"] = json!(10);
        row["usename"] = json!("app");
        if row.get("backend_type").is_none() {
            let parallel = row["pid"] == json!(5);
            row["backend_type"] = json!(if parallel { "parallel worker" } else { "client backend" });
        }
        row
    })
    .collect();
    let capture = Value::Array(capture);
    let f = parse(
        json!({"min_blocked_age": "30s", "backend_type": ["client backend", "parallel worker", "logical replication parallel worker"]}),
    );
    let now = replay::parse_timestamp("2026-11-25T12:01:00Z").ok();
    let rows = replay::replay(&f, &capture, now, &NO_PROTECTION, no_interrupt).unwrap();
    assert_eq!(
        rows,
        vec![(3, false), (4, true), (5, true), (6, false), (7, false)]
    );
}

#[test]
fn a_large_deadlock_cycle_is_worked_out_in_linear_time_with_cancel_points() {
    // 20,000 sessions each waiting for the next, the last for the first: one cycle. Every
    // member is behind every other; the earliest start behind each is the earliest of the
    // others'. The walk stops to let a cancel in, again and again.
    let n = 20_000;
    let mut calls = 0u32;
    let blocked_by: Vec<Vec<i32>> = (0..n).map(|i| vec![(i + 1) % n + 1]).collect();
    let waits: Vec<(i32, &[i32], Option<i64>)> = (0..n)
        .map(|i| {
            (
                i + 1,
                blocked_by[i as usize].as_slice(),
                Some(i64::from(1000 + i)),
            )
        })
        .collect();
    let chains = LockChains::new(
        lists(&waits),
        ChainNeeds {
            count_up_to: Some(100),
            longest_wait_behind: true,
            holding_up: false,
        },
        &mut || calls += 1,
    );
    assert_eq!(chains.facts(1).longest_wait_behind, Some(1001));
    assert_eq!(chains.facts(5).longest_wait_behind, Some(1000));
    assert_eq!(chains.facts(1).blocked_sessions, 100);
    assert!(!chains.facts(1).root());
    // Linear: a few steps per session (a walk per blocker that stopped at the cap would be
    // hundreds of checks).
    assert!((10..=100).contains(&calls), "{calls} interrupt checks");
}

/// The most expensive filter the regex budget allows (`pgrx-tests/fixtures`): as many different
/// regexes as fit of the kind slowest to match (a lazy DFA with many states, which fills its
/// cache and falls back to the PikeVM on text made of "a" and "b" that it does not match).
pub const BUDGET_FIXTURE: &str = include_str!("../../pgrx-tests/fixtures/regex_budget_filter.json");

#[test]
fn the_regexes_of_a_filter_share_one_budget() {
    let compiles = |v: &Value| {
        let mut calls = 0;
        let parsed =
            Filter::parse_str_checked(&v.to_string(), &Vocabulary::default(), &mut || calls += 1);
        (parsed, calls)
    };
    // The review's filter: 1,900 copies of one regex are compiled once.
    let same: Vec<Value> = (0..1900)
        .map(|_| json!({"query": {"regex": r"\w{15}"}}))
        .collect();
    let (parsed, calls) = compiles(&json!({"any": same}));
    let f = parsed.unwrap();
    assert!(calls <= 2, "{calls} compilations");
    assert!(
        f.regex_bytes > 1 << 20 && f.regex_bytes < 8 << 20,
        "{}",
        f.regex_bytes
    );
    let mut s = session(10);
    s.query = Some("a_fifteen_chars_word".into());
    assert!(f.matches(&s, &CTX));
    s.query = Some("short words only".into());
    assert!(!f.matches(&s, &CTX));

    // 1,900 different ones: refused once the budget is spent, after a handful of compilations,
    // each preceded by a call of the interrupt check.
    let different: Vec<Value> = (0..1900)
        .map(|i| json!({"query": {"regex": format!(r"\w{{15}}{i}")}}))
        .collect();
    let (parsed, calls) = compiles(&json!({"any": different}));
    let e = parsed.unwrap_err();
    assert!(matches!(e, FilterError::RegexBudget { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "filter key \"any[4].query\": the filter's regexes would take more than their budget of 16 MiB together (each counts its compiled size and the cache it may grow while matching); use fewer or simpler regexes, or exact values"
    );
    assert!((2..=8).contains(&calls), "{calls} compilations");

    // Ordinary regexes: a hundred fit.
    let ordinary: Vec<Value> = (0..100)
        .map(|i| json!({"application_name": {"regex": format!(r"(?i)^report-{i}-\d+$")}}))
        .collect();
    let f = parse(json!({"any": ordinary}));
    assert!(f.regex_bytes <= REGEX_BUDGET_BYTES);
}

#[test]
fn the_budget_fixture_is_the_most_the_budget_allows() {
    let fixture: Value = serde_json::from_str(BUDGET_FIXTURE).unwrap();
    let f = parse(fixture.clone());
    assert!(f.regex_bytes <= REGEX_BUDGET_BYTES);
    assert!(
        f.regex_bytes > REGEX_BUDGET_BYTES - (256 << 10),
        "{}",
        f.regex_bytes
    );
    let mut more = fixture;
    more["any"]
        .as_array_mut()
        .unwrap()
        .push(json!({"query": {"regex": "x118|[ab]a[ab]{16}[ab]c|y"}}));
    assert!(err(more).contains("budget of 16 MiB"));
}

#[test]
fn each_regex_is_evaluated_once_per_session_and_column_with_a_cancel_point() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    fn count() {
        CALLS.fetch_add(1, Ordering::Relaxed);
    }
    let ctx = MatchContext {
        interrupt: count,
        ..CTX
    };
    let s = session(10);
    // 1,000 copies of one regex (they cost the budget one regex) cost one evaluation, on each
    // column it is applied to.
    let copies: Vec<Value> = (0..1000)
        .flat_map(|_| {
            [
                json!({"query": {"regex": "^x"}}),
                json!({"application_name": {"regex": "^x"}}),
            ]
        })
        .collect();
    let f = parse(json!({"any": copies}));
    CALLS.store(0, Ordering::Relaxed);
    assert!(!f.matches(&s, &ctx));
    assert_eq!(CALLS.load(Ordering::Relaxed), 2);
    // Different regexes: a cancel point before each.
    let different: Vec<Value> = (0..5)
        .map(|i| json!({"query": {"regex": format!("^x{i}")}}))
        .collect();
    let f = parse(json!({"any": different}));
    CALLS.store(0, Ordering::Relaxed);
    assert!(!f.matches(&s, &ctx));
    assert_eq!(CALLS.load(Ordering::Relaxed), 5);
    // And one per session where a selection loops over sessions.
    CALLS.store(0, Ordering::Relaxed);
    let sessions: Vec<Session> = (2..=5).map(session).collect();
    assert!(f.select(&sessions, &ctx).victims.is_empty());
    assert_eq!(CALLS.load(Ordering::Relaxed), 4 + 4 * 5);
}

/// PostgreSQL's lock modes, as the queues carry them.
const ACCESS_SHARE: u8 = 1;
const ROW_EXCLUSIVE: u8 = 3;
const EXCLUSIVE: u8 = 7;
const ACCESS_EXCLUSIVE: u8 = 8;

/// PostgreSQL's conflict table (lock.c's LockConflicts).
fn conflicts() -> [u32; MAX_LOCK_MODE + 1] {
    let bits = |modes: &[u32]| modes.iter().fold(0u32, |m, b| m | 1 << b);
    [
        0,
        bits(&[8]),
        bits(&[7, 8]),
        bits(&[5, 6, 7, 8]),
        bits(&[4, 5, 6, 7, 8]),
        bits(&[3, 4, 6, 7, 8]),
        bits(&[3, 4, 5, 6, 7, 8]),
        bits(&[2, 3, 4, 5, 6, 7, 8]),
        bits(&[1, 2, 3, 4, 5, 6, 7, 8]),
        0,
    ]
}

/// One queue: holders (pid, mode held), then waiters (pid, mode) in order; every pid its own
/// group, waiting since its place in the queue (the first for longest).
fn one_queue(holders: &[(i32, u8)], waiters: &[(i32, u8)]) -> Waits {
    Waits {
        waiting: waiters
            .iter()
            .enumerate()
            .map(|(i, &(pid, _))| WaitingProcess {
                pid,
                group: pid,
                wait_start: Some(NOW - (waiters.len() - i) as i64 * SEC),
            })
            .collect(),
        queues: vec![LockQueue {
            conflicts: conflicts(),
            holders: holders
                .iter()
                .map(|&(group, mode)| Holder {
                    group,
                    modes: 1 << mode,
                })
                .collect(),
            waiters: waiters
                .iter()
                .map(|&(group, mode)| Queued { group, mode })
                .collect(),
        }],
        lists: Vec::new(),
    }
}

#[test]
fn a_migration_pileup_from_the_lock_managers_queue() {
    // A report (pid 1) holds AccessShareLock; ALTER TABLE (2) waits for AccessExclusiveLock;
    // 2,000 readers (3..) queue behind it for AccessShareLock: blocked by the ALTER only (not by
    // the report, nor by each other).
    let k = 2000;
    let mut waiters = vec![(2, ACCESS_EXCLUSIVE)];
    waiters.extend((3..3 + k).map(|pid| (pid, ACCESS_SHARE)));
    let mut calls = 0u64;
    let chains = LockChains::new(
        one_queue(&[(1, ACCESS_SHARE)], &waiters),
        EVERYTHING,
        &mut || calls += 1,
    );
    let report = chains.facts(1);
    assert!(report.root());
    assert_eq!(report.blocked_sessions, k as u32 + 1);
    assert_eq!(report.longest_wait_behind, Some(NOW - (k as i64 + 1) * SEC));
    let alter = chains.facts(2);
    assert!(alter.blocked && alter.blocking && !alter.root());
    assert_eq!(alter.blocked_sessions, k as u32);
    let reader = chains.facts(100);
    assert!(reader.blocked && !reader.blocking);
    assert_eq!(reader.blocked_sessions, 0);
    // Linear: no per-pair work (2,000 x 2,000 would be a thousand checks).
    assert!(calls < 20, "{calls} interrupt checks");
}

#[test]
fn a_queue_of_exclusive_waiters_on_one_row() {
    // A transaction (1) holds a row's tuple lock; 200 updaters queue for it, each behind the
    // holder and every one ahead: 200 x 199 / 2 pairs, none of them listed.
    let waiters: Vec<(i32, u8)> = (2..202).map(|pid| (pid, EXCLUSIVE)).collect();
    let chains = LockChains::new(
        one_queue(&[(1, EXCLUSIVE)], &waiters),
        EVERYTHING,
        &mut || {},
    );
    assert!(chains.facts(1).root());
    assert_eq!(chains.facts(1).blocked_sessions, 200);
    assert_eq!(chains.facts(2).blocked_sessions, 199);
    assert_eq!(chains.facts(200).blocked_sessions, 1);
    assert!(!chains.facts(201).blocking && chains.facts(201).blocked);
    // The first waiter holds up the rest; the earliest wait behind it is the second's.
    assert_eq!(chains.facts(2).longest_wait_behind, Some(NOW - 199 * SEC));
    // Counts stop at the threshold a filter asks for.
    let capped = LockChains::new(
        one_queue(&[(1, EXCLUSIVE)], &waiters),
        ChainNeeds {
            count_up_to: Some(10),
            longest_wait_behind: false,
            holding_up: false,
        },
        &mut || {},
    );
    assert_eq!(capped.facts(1).blocked_sessions, 10);
    assert_eq!(capped.facts(195).blocked_sessions, 6);
}

#[test]
fn a_prepared_transaction_heads_a_chain_no_session_is_its_root() {
    // A prepared transaction (node 0) holds a row; session 2 waits for it, 3 behind 2. Nobody
    // with a backend is a root: 2 is blocked (by the prepared transaction).
    let chains = LockChains::new(
        one_queue(&[(0, EXCLUSIVE)], &[(2, EXCLUSIVE), (3, EXCLUSIVE)]),
        EVERYTHING,
        &mut || {},
    );
    assert!(chains.a_prepared_transaction_blocks());
    let first = chains.facts(2);
    assert!(first.blocked && first.blocking && !first.root());
    assert_eq!(first.blocked_sessions, 1);
    let mut sessions = vec![session(2), session(3)];
    for s in &mut sessions {
        s.locks = chains.facts(s.pid);
    }
    assert_eq!(
        chosen(json!({"blocking": "root"}), &sessions),
        Vec::<i32>::new()
    );
    assert_eq!(chosen(json!({"blocking": true}), &sessions), vec![2]);
    assert_eq!(chosen(json!({"blocked": true}), &sessions), vec![2, 3]);
    assert_eq!(
        chosen(json!({"min_blocked_sessions": 1}), &sessions),
        vec![2]
    );
}

#[test]
fn lock_groups_never_block_themselves_in_a_queue() {
    // A parallel query (leader 10, workers 11 and 12: one group) holds AccessShareLock and its
    // worker waits behind an ALTER that waits behind the group's hold: a deadlock in two
    // groups. Another reader (20) waits behind the ALTER too. The group is counted as its three
    // processes.
    let mut waits = one_queue(
        &[(10, ACCESS_SHARE)],
        &[
            (30, ACCESS_EXCLUSIVE),
            (10, ACCESS_SHARE),
            (20, ACCESS_SHARE),
        ],
    );
    waits.waiting = [(10, 10), (11, 10), (12, 10), (30, 30), (20, 20)]
        .iter()
        .map(|&(pid, group)| WaitingProcess {
            pid,
            group,
            wait_start: Some(NOW - SEC),
        })
        .collect();
    let chains = LockChains::new(waits, EVERYTHING, &mut || {});
    for pid in [10, 11, 12] {
        let f = chains.facts(pid);
        assert!(f.blocked && f.blocking && !f.root(), "{pid}");
        // Behind the group: the ALTER and the other reader (and not itself).
        assert_eq!(f.blocked_sessions, 2, "{pid}");
    }
    // Behind the ALTER: the group's three processes and the reader.
    assert_eq!(chains.facts(30).blocked_sessions, 4);
    let reader = chains.facts(20);
    assert!(reader.blocked && !reader.blocking);
    // A row exclusive writer of the same group as the holder is not blocked by it.
    let alone = LockChains::new(
        one_queue(&[(10, ROW_EXCLUSIVE)], &[(10, ROW_EXCLUSIVE)]),
        EVERYTHING,
        &mut || {},
    );
    assert!(!alone.facts(10).blocked && !alone.facts(10).blocking);
}

#[test]
fn long_chains_and_dense_queues_cost_no_quadratic_walk() {
    // The review's captures: a chain of 16,384 sessions (each waits for the one before), and a
    // queue of 4,000 waiters each blocked by the holder and the one ahead, counted to the end.
    for (name, lists) in [
        (
            "chain",
            (2..=16_384)
                .map(|pid| (pid, vec![pid - 1]))
                .collect::<Vec<(i32, Vec<i32>)>>(),
        ),
        (
            "dense queue",
            (2..=4_001).map(|pid| (pid, vec![1, pid - 1])).collect(),
        ),
    ] {
        let n = lists.len() as u32;
        let waits = Waits {
            waiting: lists
                .iter()
                .map(|(pid, _)| WaitingProcess {
                    pid: *pid,
                    group: *pid,
                    wait_start: Some(NOW),
                })
                .collect(),
            lists,
            queues: Vec::new(),
        };
        let mut calls = 0u64;
        let chains = LockChains::new(
            waits,
            ChainNeeds {
                count_up_to: Some(n),
                longest_wait_behind: true,
                holding_up: false,
            },
            &mut || calls += 1,
        );
        assert_eq!(chains.facts(1).blocked_sessions, n, "{name}");
        assert_eq!(chains.facts(2).blocked_sessions, n - 1, "{name}");
        // Bit-set unions: a few times n x n / 64 word steps, each set made, filled and counted
        // (n x n steps would be 65,000 checks).
        let bound = 6 * u64::from(n) * u64::from(n) / 64 / 4096 + u64::from(n) / 100 + 10;
        assert!(
            calls <= bound,
            "{name}: {calls} interrupt checks, bound {bound}"
        );
    }
}

#[test]
fn blockers_that_wait_for_nothing_cost_no_set_each() {
    // The review's capture: one waiting session blocked by a hundred thousand made-up pids,
    // and one session behind it. The sets hold only sessions someone can be behind (two
    // here): not one word per made-up pid for each of them.
    let n = 100_000;
    let lists = vec![(1, (2..=n + 1).collect::<Vec<i32>>()), (n + 2, vec![1])];
    let waits = Waits {
        waiting: [1, n + 2]
            .iter()
            .map(|&pid| WaitingProcess {
                pid,
                group: pid,
                wait_start: Some(NOW),
            })
            .collect(),
        lists,
        queues: Vec::new(),
    };
    let mut calls = 0u64;
    let chains = LockChains::new(
        waits,
        ChainNeeds {
            count_up_to: Some(3),
            longest_wait_behind: true,
            holding_up: false,
        },
        &mut || calls += 1,
    );
    assert_eq!(chains.facts(2).blocked_sessions, 2);
    assert_eq!(chains.facts(1).blocked_sessions, 1);
    assert_eq!(chains.facts(n + 1).blocked_sessions, 2);
    // Linear in the edges (a set per made-up pid over every pid was 100,000 x 1,563 words:
    // 38,000 checks and 1.25 GB).
    let bound = 20 * u64::from(n as u32) / 4096 + 10;
    assert!(calls <= bound, "{calls} interrupt checks, bound {bound}");
}
