//! A second, table-driven bad-input catalogue (`refusals.rs` holds the first): more wrong
//! types, misspelt and strange keys, empty and huge strings, deep nesting, invalid regexes,
//! addresses and intervals, numbers out of range, duplicate keys, NULLs inside arrays and odd
//! Unicode. Every case is given to every function that takes a filter; each call must fail with
//! SQLSTATE 22023 and a message naming the problem, quickly, and after every case the target
//! sessions (one idle, one running a query) must be exactly as they were.

use pg_reaper_integration::*;
use std::time::{Duration, Instant};

/// One invalid input: the filter as JSON text (None: SQL NULL) and a substring the message must
/// contain (it names the key or value at fault).
struct Case {
    filter: Option<String>,
    needle: String,
}

fn case(filter: &str, needle: &str) -> Case {
    Case {
        filter: Some(filter.to_string()),
        needle: needle.to_string(),
    }
}

fn catalogue() -> Vec<Case> {
    let mib = "x".repeat(1 << 20);
    let mut cases = vec![
        Case {
            filter: None,
            needle: "must not be NULL".into(),
        },
        // Unknown and misspelt keys.
        case(r#"{"": "x"}"#, r#"unknown filter key """#),
        case(r#"{" usename": "x"}"#, r#"(did you mean "usename"?)"#),
        case(r#"{"UseName": "x"}"#, r#"(did you mean "usename"?)"#),
        case(
            r#"{"application-name": "x"}"#,
            r#"(did you mean "application_name"?)"#,
        ),
        case(r#"{"user": "x"}"#, r#"unknown filter key "user""#),
        case(r#"{"database": "x"}"#, r#"unknown filter key "database""#),
        case(
            r#"{"usename": "x", "extra": {}}"#,
            r#"unknown filter key "extra""#,
        ),
        case(
            r#"{"query": {"Regex": "a"}}"#,
            r#"unknown filter key "query.Regex" (did you mean "regex"?)"#,
        ),
        case(
            r#"{"query": {"regex": "a", "flags": "i"}}"#,
            r#"unknown filter key "query.flags""#,
        ),
        case(
            r#"{"any": [{"usename": "x"}, {"bogus": 1}]}"#,
            r#"unknown filter key "any[1].bogus""#,
        ),
        // Wrong types, key by key.
        case(
            r#"{"datname": null}"#,
            r#"filter key "datname" must be a string"#,
        ),
        case(
            r#"{"application_name": true}"#,
            r#""application_name" must be a string, an array of strings or {"regex": "..."}, not a boolean"#,
        ),
        case(
            r#"{"application_name": 1.5}"#,
            r#""application_name" must be a string, an array of strings or {"regex": "..."}, not a fractional number"#,
        ),
        case(
            r#"{"client_hostname": ["a", ["b"]]}"#,
            r#""client_hostname[1]" must be a string, not an array"#,
        ),
        case(
            r#"{"wait_event_type": ["Lock", {"regex": "x"}]}"#,
            r#""wait_event_type[1]" must be a string, not an object"#,
        ),
        case(
            r#"{"wait_event": {"regex": 1}}"#,
            r#""wait_event.regex" must be a string, not a number"#,
        ),
        case(
            r#"{"datname": {"regex": ["a"]}}"#,
            r#""datname.regex" must be a string, not an array"#,
        ),
        case(
            r#"{"query": {"regex": null}}"#,
            r#""query.regex" must be a string, not null"#,
        ),
        case(
            r#"{"query": {}}"#,
            r#""query" must be a string, an array of strings or {"regex": "..."}, not an object"#,
        ),
        case(
            r#"{"pid": true}"#,
            r#""pid" must be an integer or an array of integers, not a boolean"#,
        ),
        case(
            r#"{"pid": {"in": [1]}}"#,
            r#""pid" must be an integer or an array of integers, not an object"#,
        ),
        case(
            r#"{"pid": [1.5]}"#,
            r#""pid[0]" must be an integer, not a fractional number"#,
        ),
        case(
            r#"{"min_state_age": true}"#,
            r#""min_state_age" must be an integer number of milliseconds or an interval string"#,
        ),
        case(
            r#"{"min_state_age": [1]}"#,
            r#""min_state_age" must be an integer number of milliseconds or an interval string"#,
        ),
        case(
            r#"{"min_query_age": 1.5}"#,
            r#""min_query_age" must be an integer number of milliseconds"#,
        ),
        case(
            r#"{"blocked": null}"#,
            r#""blocked" must be true or false, not null"#,
        ),
        case(
            r#"{"blocked": 1}"#,
            r#""blocked" must be true or false, not a number"#,
        ),
        case(
            r#"{"blocking": "true"}"#,
            r#""blocking": unknown blocking "true" (expected one of true, false, "root")"#,
        ),
        case(
            r#"{"blocking": null}"#,
            r#""blocking" must be true, false or "root", not null"#,
        ),
        case(r#"{"blocking": "Root"}"#, r#"(did you mean "root"?)"#),
        // holding_up: a filter of the sessions held up, not nested, at most 16.
        case(
            r#"{"holding_up": "checkout"}"#,
            r#""holding_up" must be a filter object (the sessions held up), not a string"#,
        ),
        case(
            r#"{"holding_up": {"holding_up": {"usename": "x"}}}"#,
            r#"filter key "holding_up.holding_up" is not allowed inside "holding_up""#,
        ),
        case(
            r#"{"holding_up": {"bogus": 1}}"#,
            r#"unknown filter key "holding_up.bogus""#,
        ),
        Case {
            filter: Some(format!(
                r#"{{"any": [{}]}}"#,
                vec![r#"{"holding_up": {"usename": "x"}}"#; 17].join(", ")
            )),
            needle: r#"filter has more than 16 "holding_up" keys (at "any[16].holding_up")"#.into(),
        },
        // The lock-chain keys.
        case(
            r#"{"min_blocked_sessions": 0}"#,
            r#""min_blocked_sessions": 0 is out of range (it must be a positive integer, at most 4294967295)"#,
        ),
        case(
            r#"{"min_blocked_sessions": 4294967296}"#,
            r#""min_blocked_sessions": 4294967296 is out of range"#,
        ),
        case(
            r#"{"min_blocked_sessions": -1}"#,
            r#""min_blocked_sessions": -1 is out of range"#,
        ),
        case(
            r#"{"min_blocked_sessions": 2.5}"#,
            r#""min_blocked_sessions" must be a positive integer, not a fractional number"#,
        ),
        case(
            r#"{"min_blocked_sessions": [2]}"#,
            r#""min_blocked_sessions" must be a positive integer, not an array"#,
        ),
        case(
            r#"{"min_blocking_age": "30 parsecs"}"#,
            r#""min_blocking_age": "30 parsecs" is not a valid interval"#,
        ),
        case(
            r#"{"min_blocking_age": -5}"#,
            r#""min_blocking_age" must not be negative"#,
        ),
        case(
            r#"{"min_blocked_age": true}"#,
            r#""min_blocked_age" must be an integer number of milliseconds or an interval string"#,
        ),
        case(
            r#"{"min_bloked_age": 1}"#,
            r#"(did you mean "min_blocked_age"?)"#,
        ),
        case(
            r#"{"min_blocked_session": 1}"#,
            r#"(did you mean "min_blocked_sessions"?)"#,
        ),
        // Quotas.
        case(
            r#"{"all": true, "keep": 0}"#,
            r#""keep": 0 is out of range (it must be a positive integer, at most 1000000)"#,
        ),
        case(
            r#"{"all": true, "keep": 1000001}"#,
            r#""keep": 1000001 is out of range"#,
        ),
        case(
            r#"{"all": true, "keep": "20"}"#,
            r#""keep" must be a positive integer, not a string"#,
        ),
        case(
            r#"{"all": true, "keep": null}"#,
            r#""keep" must be a positive integer, not null"#,
        ),
        case(
            r#"{"all": true, "per": ["usename"]}"#,
            r#"filter key "per" needs "keep""#,
        ),
        case(
            r#"{"all": true, "keep": 2, "per": []}"#,
            r#""per" must not be an empty array"#,
        ),
        case(
            r#"{"all": true, "keep": 2, "per": ["datname", "datname"]}"#,
            r#""per[1]" names "datname" more than once"#,
        ),
        case(
            r#"{"all": true, "keep": 2, "per": ["state"]}"#,
            r#""per[0]": unknown column "state" (expected one of usename, datname, application_name, client_addr)"#,
        ),
        case(
            r#"{"all": true, "keep": 2, "per": "user"}"#,
            r#""per": unknown column "user""#,
        ),
        case(
            r#"{"all": true, "keep": 2, "per": [1]}"#,
            r#""per[0]" must be a column name, not a number"#,
        ),
        case(
            r#"{"all": true, "keep": 2, "per": {"usename": true}}"#,
            r#""per" must be a column name or an array of column names, not an object"#,
        ),
        case(
            r#"{"any": [{"usename": "x", "keep": 1}]}"#,
            r#""any[0].keep" is only allowed at the top level"#,
        ),
        case(
            r#"{"exclude": {"usename": "x", "per": "usename"}, "all": true}"#,
            r#""exclude.per" is only allowed at the top level"#,
        ),
        case(
            r#"{"all": true, "order": "newest"}"#,
            r#"unknown order "newest" (expected one of oldest_backend, newest_backend, oldest_xact, newest_xact, oldest_query, newest_query, oldest_state, newest_state)"#,
        ),
        // Protected tools.
        case(
            r#"{"all": true, "include_protected": 1}"#,
            r#""include_protected" must be true or false, not a number"#,
        ),
        case(
            r#"{"any": [{"include_protected": true}]}"#,
            r#""any[0].include_protected" is only allowed at the top level"#,
        ),
        case(
            r#"{"all": true, "include_protectd": true}"#,
            r#"(did you mean "include_protected"?)"#,
        ),
        case(
            r#"{"all": "true"}"#,
            r#""all" must be true or false, not a string"#,
        ),
        case(
            r#"{"all": true, "limit": 1.5}"#,
            r#""limit" must be a positive integer, not a fractional number"#,
        ),
        case(
            r#"{"all": true, "limit": "5"}"#,
            r#""limit" must be a positive integer, not a string"#,
        ),
        case(
            r#"{"all": true, "order": null}"#,
            r#""order" must be a string, not null"#,
        ),
        case(
            r#"{"all": true, "include_superusers": "yes"}"#,
            r#""include_superusers" must be true or false, not a string"#,
        ),
        case(
            r#"{"any": null}"#,
            r#""any" must be an array of filters, not null"#,
        ),
        case(
            r#"{"any": [1]}"#,
            r#""any[0]" must be a filter object, not a number"#,
        ),
        case(
            r#"{"any": [[{"usename": "x"}]]}"#,
            r#""any[0]" must be a filter object, not an array"#,
        ),
        case(
            r#"{"exclude": [], "all": true}"#,
            r#""exclude" must be a filter object, not an array"#,
        ),
        case(
            r#"{"exclude": null, "all": true}"#,
            r#""exclude" must be a filter object, not null"#,
        ),
        // Keys that belong at the top level only; empty sub-filters.
        case(
            r#"{"any": [{"usename": "x", "order": "newest_backend"}]}"#,
            r#""any[0].order" is only allowed at the top level"#,
        ),
        case(
            r#"{"any": [{"include_superusers": true}]}"#,
            r#""any[0].include_superusers" is only allowed at the top level"#,
        ),
        case(
            r#"{"exclude": {"limit": 1}, "all": true}"#,
            r#""exclude.limit" is only allowed at the top level"#,
        ),
        case(
            r#"{"exclude": {}, "all": true}"#,
            r#"the filter at "exclude" has no criterion"#,
        ),
        // NULLs and empties inside arrays.
        case(r#"{"pid": []}"#, r#""pid" must not be an empty array"#),
        case(
            r#"{"pid": [1, null]}"#,
            r#""pid[1]" must be an integer, not null"#,
        ),
        case(
            r#"{"state": ["idle", null]}"#,
            r#""state[1]" must be a string, not null"#,
        ),
        case(
            r#"{"client_addr": []}"#,
            r#""client_addr" must not be an empty array"#,
        ),
        case(
            r#"{"client_addr": null}"#,
            r#""client_addr" must be an address, a CIDR network, "local", or an array of those, not null"#,
        ),
        // Empty strings.
        case(r#"{"state": ""}"#, r#"unknown state """#),
        case(r#"{"client_addr": ""}"#, r#""" is not an IP address"#),
        case(
            r#"{"min_state_age": ""}"#,
            r#""min_state_age": "" is not a valid interval"#,
        ),
        case(r#"{"all": true, "order": ""}"#, r#"unknown order """#),
        // Invalid regexes (Rust syntax: no backreferences, no look-around; bounded size).
        case(
            r#"{"backend_type": {"regex": "("}}"#,
            r#""backend_type" has an invalid regex "(""#,
        ),
        case(
            r#"{"query": {"regex": "[z-a]"}}"#,
            r#""query" has an invalid regex "[z-a]""#,
        ),
        case(
            r#"{"query": {"regex": "a{2,1}"}}"#,
            r#""query" has an invalid regex "a{2,1}""#,
        ),
        case(
            r#"{"query": {"regex": "\\"}}"#,
            r#""query" has an invalid regex"#,
        ),
        case(
            r#"{"query": {"regex": "(?z)a"}}"#,
            r#""query" has an invalid regex "(?z)a""#,
        ),
        case(
            r#"{"query": {"regex": "\\p{NoSuchClass}"}}"#,
            r#""query" has an invalid regex"#,
        ),
        case(
            r#"{"query": {"regex": "(?P<n>a)(?P<n>b)"}}"#,
            "duplicate capture group name",
        ),
        case(
            r#"{"query": {"regex": "(?=a)"}}"#,
            r#""query" has an invalid regex"#,
        ),
        case(
            r#"{"query": {"regex": "(?-u:\\xff)"}}"#,
            r#""query" has an invalid regex"#,
        ),
        // Compiles to more than 1 MiB: refused rather than built.
        case(r#"{"query": {"regex": "a{100000}"}}"#, "exceeds size limit"),
        case(
            r#"{"query": {"regex": "(?:\\w{50}){50}"}}"#,
            "exceeds size limit",
        ),
        // Invalid addresses and networks.
        case(
            r#"{"client_addr": "10.0.0.0/8/8"}"#,
            r#""10.0.0.0/8/8" is not an IP address"#,
        ),
        case(
            r#"{"client_addr": "::1/129"}"#,
            r#""::1/129" is not an IP address"#,
        ),
        case(
            r#"{"client_addr": "10.0.0.0/-1"}"#,
            r#""10.0.0.0/-1" is not an IP address"#,
        ),
        case(
            r#"{"client_addr": "1.2.3"}"#,
            r#""1.2.3" is not an IP address"#,
        ),
        case(
            r#"{"client_addr": "LOCAL"}"#,
            r#""LOCAL" is not an IP address"#,
        ),
        case(
            r#"{"client_addr": {"cidr": "10.0.0.0/8"}}"#,
            r#""client_addr" must be an address"#,
        ),
        // Invalid intervals.
        case(
            r#"{"min_state_age": "minutes"}"#,
            r#""minutes" is not a valid interval"#,
        ),
        case(
            r#"{"min_state_age": "1 fortnight"}"#,
            r#"unknown unit "fortnight""#,
        ),
        case(
            r#"{"min_xact_age": "10:99:00"}"#,
            r#""10:99:00" is not a valid interval"#,
        ),
        case(
            r#"{"min_backend_age": "infinity"}"#,
            r#""infinity" is not a valid interval"#,
        ),
        case(r#"{"min_state_age": "100000000 years"}"#, "is out of range"),
        case(
            r#"{"min_state_age": "5 minutes ago"}"#,
            r#""min_state_age" must not be negative"#,
        ),
        case(
            r#"{"min_state_age": "@ 5 minutes ago"}"#,
            r#""min_state_age" must not be negative"#,
        ),
        // Numbers out of range.
        case(r#"{"pid": 3e9}"#, "3000000000 is out of range"),
        case(r#"{"pid": -5}"#, "-5 is out of range"),
        case(r#"{"pid": 2147483648}"#, "2147483648 is out of range"),
        case(r#"{"pid": [1, 1e400]}"#, "number out of range"),
        case(r#"{"all": true, "limit": 1e400}"#, "number out of range"),
        case(
            r#"{"all": true, "limit": 100000000000000000000}"#,
            r#""limit" must be a positive integer"#,
        ),
        case(
            r#"{"min_state_age": 1e20}"#,
            r#""min_state_age" must be an integer number of milliseconds"#,
        ),
        // Duplicate keys: jsonb keeps only the last one, so each case makes the surviving
        // (last) value the invalid one; the first value alone would be valid.
        case(
            r#"{"usename": "x", "limit": 5, "limit": 0}"#,
            r#""limit": 0 is out of range"#,
        ),
        case(
            r#"{"usename": "x", "usename": 5}"#,
            r#""usename" must be a string"#,
        ),
        case(
            r#"{"min_query_age": "5 minutes", "min_query_age": -1}"#,
            r#""min_query_age" must not be negative"#,
        ),
        case(
            r#"{"state": "active", "state": "Active"}"#,
            r#"unknown state "Active" (expected one of"#,
        ),
        case(
            r#"{"usename": "x", "all": true, "all": false}"#,
            r#""all" must be true"#,
        ),
        case(
            r#"{"application_name": {"regex": "(?i)x", "regex": "x{5,2}"}}"#,
            r#"invalid regex "x{5,2}""#,
        ),
        case(
            r#"{"pid": 1, "pid": []}"#,
            r#""pid" must not be an empty array"#,
        ),
        // Strange Unicode (no NUL: jsonb refuses \u0000 itself, before pg_reaper).
        case(r#"{"\u202eemanesu": "x"}"#, "unknown filter key"),
        case(r#"{"use\u200dname": "x"}"#, r#"(did you mean "usename"?)"#),
        case(r#"{"us\u00e9name": "x"}"#, r#"(did you mean "usename"?)"#),
        case(
            r#"{"us\u00c3\u00a9name": "x"}"#,
            r#"(did you mean "usename"?)"#,
        ),
        case(
            r#"{"\uff55\uff53\uff45\uff4e\uff41\uff4d\uff45": "x"}"#,
            "unknown filter key",
        ),
        case(r#"{"\ufffd": "x"}"#, "unknown filter key"),
        case(r#"{"usename\u0001": "x"}"#, "unknown filter key"),
        case(r#"{"usename\t": "x"}"#, r#"(did you mean "usename"?)"#),
        case(r#"{"😈": {"regex": ".*"}}"#, "unknown filter key"),
        case(r#"{"state": "idle\u200f"}"#, r#"(did you mean "idle"?)"#),
        case(r#"{"state": "idle\t"}"#, r#"(did you mean "idle"?)"#),
        case(
            r#"{"client_addr": "10.0.0.1\u200e"}"#,
            "is not an IP address",
        ),
        case(
            r#"{"client_addr": "\uff11\uff10.0.0.1"}"#,
            "is not an IP address",
        ),
        case(
            r#"{"pid": "\u0661\u0662\u0663"}"#,
            r#""pid" must be an integer or an array of integers, not a string"#,
        ),
        case(
            r#"{"min_state_age": "\u22125 minutes"}"#,
            r#""min_state_age": "−5 minutes" is not a valid interval"#,
        ),
        case(r#"{"min_state_age": "5 min\u0007"}"#, r#""min_state_age""#),
    ];
    // Huge strings: 1 MiB in a key, a value, a regex, an address; just over the 4 KiB string
    // bound; an array far over the 64 KiB text bound.
    cases.push(case(
        &format!(r#"{{"{mib}": 1}}"#),
        "the limit is 65536 bytes",
    ));
    cases.push(case(
        &format!(r#"{{"query": {{"regex": "{mib}"}}}}"#),
        "the limit is 65536 bytes",
    ));
    cases.push(case(
        &format!(r#"{{"client_addr": "{mib}"}}"#),
        "the limit is 65536 bytes",
    ));
    cases.push(case(
        &format!(r#"{{"usename": "{}"}}"#, "y".repeat(4097)),
        r#"filter key "usename" is 4097 bytes long; the limit is 4096"#,
    ));
    cases.push(case(
        &format!(r#"{{"min_state_age": "{} seconds"}}"#, "1".repeat(5000)),
        r#"filter key "min_state_age" is 5008 bytes long; the limit is 4096"#,
    ));
    let many: Vec<String> = (0..20_000).map(|i| format!(r#""u{i}""#)).collect();
    cases.push(case(
        &format!(r#"{{"usename": [{}]}}"#, many.join(",")),
        "the limit is 65536 bytes",
    ));
    // Deep nesting: "any" in "any" 20 levels, "exclude" 9 levels (the bound is 8), a JSON array
    // 200 levels deep (jsonb accepts it; pg_reaper refuses JSON nested 128 levels or more).
    let mut any20 = String::from(r#"{"usename": "x"}"#);
    for _ in 0..20 {
        any20 = format!(r#"{{"any": [{any20}]}}"#);
    }
    cases.push(case(
        &any20,
        r#"filter is nested too deeply at "any[0].any[0]"#,
    ));
    let mut exclude9 = String::from(r#"{"usename": "x"}"#);
    for _ in 0..9 {
        exclude9 = format!(r#"{{"exclude": {exclude9}, "pid": 1}}"#);
    }
    cases.push(case(
        &exclude9,
        r#"filter is nested too deeply at "exclude.exclude"#,
    ));
    cases.push(case(
        &format!(
            r#"{{"usename": {}"x"{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        ),
        "recursion limit exceeded",
    ));
    cases.push(case(
        &format!(r#"{{"any": {}{{}}{}}}"#, "[".repeat(200), "]".repeat(200)),
        "recursion limit exceeded",
    ));
    cases.push(case(
        &format!(
            r#"{{"usename": {}"x"{}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        ),
        r#""usename[0]" must be a string, not an array"#,
    ));
    cases
}

/// The functions that take a filter, with valid other arguments.
const CALLS: [&str; 6] = [
    "SELECT count(*) FROM reaper.preview_matching($1::text::jsonb)",
    "SELECT count(*) FROM reaper.cancel_matching($1::text::jsonb)",
    "SELECT count(*) FROM reaper.terminate_matching($1::text::jsonb, 1000)",
    "SELECT count(*) FROM reaper.cancel_then_terminate($1::text::jsonb, 100, 1000)",
    "SELECT reaper.validate_filter($1::text::jsonb) IS NULL",
    "SELECT count(*) FROM reaper.test_filter($1::text::jsonb, '[]')",
];

/// The idle target and the busy one are exactly as they were: both connected, the busy one
/// still in the query it started at `query_start`.
fn targets_untouched(me: &mut Client, idle: i32, busy: i32, query_start: &str) -> bool {
    let n: i64 = me
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity a \
              WHERE (a.pid = $1 AND a.state = 'idle') \
                 OR (a.pid = $2 AND a.state = 'active' AND a.wait_event = 'PgSleep' \
                     AND a.query_start::text = $3)",
            &[&idle, &busy, &query_start],
        )
        .unwrap()
        .get(0);
    n == 2
}

#[test]
fn every_case_is_refused_by_every_function_and_nothing_is_touched() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("catalogue");
    let idle = cluster.session("app", &tag);
    let (busy, query) = cluster.session("app", &tag).busy(&cluster);
    let mut me = cluster.superuser();
    let query_start: String = me
        .query_one(
            "SELECT query_start::text FROM pg_catalog.pg_stat_activity WHERE pid = $1",
            &[&busy.pid],
        )
        .unwrap()
        .get(0);

    let cases = catalogue();
    let (mut calls, mut slowest, mut slowest_case) = (0usize, Duration::ZERO, String::new());
    for (n, c) in cases.iter().enumerate() {
        let shown: String = match &c.filter {
            Some(f) => f.chars().take(80).collect(),
            None => "NULL".into(),
        };
        for sql in CALLS {
            let started = Instant::now();
            let result = match &c.filter {
                Some(f) => me.query(sql, &[f]),
                None => me.query(&sql.replace("$1::text::jsonb", "NULL::jsonb"), &[]),
            };
            let took = started.elapsed();
            if took > slowest {
                slowest = took;
                slowest_case = shown.clone();
            }
            let err = match result {
                Ok(rows) => panic!("case {n} {shown}: {sql} accepted it ({} rows)", rows.len()),
                Err(e) => e,
            };
            let db = err
                .as_db_error()
                .unwrap_or_else(|| panic!("case {n} {shown}: {sql}: {err}"));
            assert_eq!(
                db.code().code(),
                "22023",
                "case {n} {shown}: {sql}: {}",
                db.message()
            );
            assert!(
                db.message().contains(&c.needle),
                "case {n} {shown}: {sql}: message {:?} lacks {:?}",
                db.message(),
                c.needle
            );
            calls += 1;
        }
        assert!(
            targets_untouched(&mut me, idle.pid, busy.pid, &query_start),
            "case {n} {shown}: a target session was touched"
        );
    }

    // The other arguments, with a filter that would select both targets.
    let good = format!(r#"{{"application_name": "{tag}"}}"#);
    let arguments = [
        (
            "reaper.terminate_matching($1::text::jsonb, -1)",
            "timeout_ms must not be negative",
        ),
        (
            "reaper.terminate_matching($1::text::jsonb, -9223372036854775808)",
            "timeout_ms must not be negative",
        ),
        (
            "reaper.terminate_matching($1::text::jsonb, NULL)",
            "timeout_ms must not be NULL",
        ),
        (
            "reaper.terminate_matching($1::text::jsonb, NULL::integer)",
            "timeout_ms must not be NULL",
        ),
        (
            "reaper.cancel_then_terminate($1::text::jsonb, -1, 1000)",
            "grace_ms must not be negative",
        ),
        (
            "reaper.cancel_then_terminate($1::text::jsonb, -9223372036854775808)",
            "grace_ms must not be negative",
        ),
        (
            "reaper.cancel_then_terminate($1::text::jsonb, NULL, 1000)",
            "grace_ms must not be NULL",
        ),
        (
            "reaper.cancel_then_terminate($1::text::jsonb, 100, NULL)",
            "timeout_ms must not be NULL",
        ),
        (
            "reaper.cancel_then_terminate($1::text::jsonb, 100, -1)",
            "timeout_ms must not be negative",
        ),
    ];
    for (f, needle) in arguments {
        let sql = format!("SELECT count(*) FROM {f}");
        let started = Instant::now();
        let err = me.query(&sql, &[&good]).unwrap_err();
        slowest = slowest.max(started.elapsed());
        let db = err.as_db_error().unwrap_or_else(|| panic!("{f}: {err}"));
        assert_eq!(db.code().code(), "22023", "{f}: {}", db.message());
        assert!(
            db.message().contains(needle),
            "{f}: {:?} lacks {needle:?}",
            db.message()
        );
        calls += 1;
        assert!(
            targets_untouched(&mut me, idle.pid, busy.pid, &query_start),
            "{f}: a target session was touched"
        );
    }

    assert!(
        query.still_running_after(Duration::from_millis(50)),
        "the busy query was cancelled"
    );
    assert_eq!(idle.run("SELECT 1"), Ended::Ok);
    assert_eq!(count(&mut me, "SELECT count(*) FROM reaper.log"), 0);
    let log = cluster.server_log();
    assert!(!log.contains("pg_reaper: "), "something was signalled");
    assert!(cases.len() >= 40, "{} cases", cases.len());
    assert!(
        // A bound that only an exponential blow-up could break; the figure itself is reported.
        slowest < Duration::from_secs(10),
        "slowest refusal took {slowest:?} ({slowest_case})"
    );
    let slowest_ms = slowest.as_secs_f64() * 1000.0;
    let shown: String = slowest_case.chars().take(40).collect();
    record_figures(
        "31-bad-input-catalogue",
        &format!(
            "## Bad input, second catalogue\n\n`bad_input_catalogue.rs`: {} more invalid filters (unknown and misspelt keys, \
             wrong types key by key, NULLs and empties inside arrays, empty and 1 MiB strings, 200-level JSON and 20-level \
             `any`, invalid regexes, addresses and intervals, numbers out of range, duplicate keys whose surviving value is \
             invalid, control characters, RTL and zero-width marks, full-width and mojibake text, emoji keys), each given to \
             preview_matching, cancel_matching, terminate_matching, cancel_then_terminate and validate_filter, plus {} bad \
             `timeout_ms` / `grace_ms` arguments: {calls} calls, every one refused with SQLSTATE 22023 and a message naming \
             the problem. After every case the two target sessions were checked: both connected, the busy one still in its \
             original query; nothing was signalled or logged. Slowest call: {slowest_ms:.1} ms (`{shown}…`).\n",
            cases.len(),
            arguments.len(),
        ),
    );
}

#[test]
fn pathological_regexes_on_a_one_mib_query_are_fast() {
    // Let pg_stat_activity hold the whole 1 MiB query text.
    let cluster = Cluster::start_with(Options {
        settings: vec!["track_activity_query_size = 1048576".into()],
        ..Options::default()
    });
    cluster.create_role("app", "");
    let tag = tag("redos_mib");
    let session = cluster.session("app", &tag);
    let query = session.start(&format!(
        "SELECT '{}!' AS t, pg_sleep(600)",
        // Just under the 1 MiB track_activity_query_size, so the text is not truncated.
        "a".repeat((1 << 20) - 100)
    ));
    cluster.wait_until(
        session.pid,
        "a.state = 'active' AND a.wait_event = 'PgSleep'",
    );
    let mut me = cluster.superuser();
    let length: i32 = me
        .query_one(
            "SELECT length(query) FROM pg_catalog.pg_stat_activity WHERE pid = $1",
            &[&session.pid],
        )
        .unwrap()
        .get(0);
    assert!(
        length > 1_000_000 && length < 1 << 20,
        "the query text is {length} characters"
    );
    let started = Instant::now();
    let mut calls = 0;
    for pattern in [
        "(a+)+$",
        "(a+)+!x",
        "^(a|a)*$",
        "(a|aa)+$",
        "(a*)*b",
        "(.*a){20}z",
        r"(\\w+\\s?)+$",
        "(?i)(a+)+b",
        "(.*){1,100}x",
        "(a?){30}a{30}z",
    ] {
        let filter =
            format!(r#"{{"application_name": "{tag}", "query": {{"regex": "{pattern}"}}}}"#);
        for f in [
            "reaper.preview_matching($1::text::jsonb)",
            "reaper.cancel_matching($1::text::jsonb)",
            "reaper.terminate_matching($1::text::jsonb, 1000)",
        ] {
            let rows = call(&mut me, f, &filter).unwrap_or_else(|e| panic!("{pattern}: {e}"));
            assert!(rows.is_empty(), "{pattern} matched: {rows:?}");
            calls += 1;
        }
    }
    let took = started.elapsed();
    // A bound that only an exponential blow-up could break (backtracking engines take hours).
    assert!(
        took < Duration::from_secs(10),
        "{calls} calls took {took:?}"
    );
    assert!(query.still_running_after(Duration::from_millis(50)));
    assert!(cluster.alive(session.pid));
}

/// The length of a value's text as jsonb writes it (a space after each ':' and ',').
fn jsonb_len(v: &serde_json::Value) -> usize {
    let t = v.to_string();
    t.len() + t.matches(',').count() + t.matches(':').count()
}

/// The costliest filters of each shape the bounds allow, and past them: what each costs a
/// fresh backend that matches it against sessions with 1 kB queries it may see.
fn worst_cases() -> Vec<(&'static str, serde_json::Value, Option<&'static str>)> {
    use serde_json::json;
    let fit = |make: &dyn Fn(usize) -> serde_json::Value| {
        // The largest n whose filter text stays within the 64 KiB limit, as jsonb writes it.
        let (mut lo, mut hi) = (1usize, 20_000usize);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if jsonb_len(&make(mid)) <= 64 * 1024 {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        make(lo)
    };
    // Eight levels of nesting (the limit), three branches at each but the last (two, so that it
    // fits in 64 KiB), the leaves `leaf`.
    fn tree(
        depth: usize,
        leaf: &dyn Fn(usize) -> serde_json::Value,
        n: &mut usize,
    ) -> serde_json::Value {
        if depth == 0 {
            *n += 1;
            return leaf(*n);
        }
        let fan_out = if depth == 1 { 2 } else { 3 };
        let branches: Vec<serde_json::Value> =
            (0..fan_out).map(|_| tree(depth - 1, leaf, n)).collect();
        if depth.is_multiple_of(2) {
            json!({"any": branches})
        } else {
            json!({"any": branches, "exclude": {"pid": 1}})
        }
    }
    let regexes = |n: usize| json!({"any": (0..n).map(|i| json!({"query": {"regex": format!("\\w{{15}}{i}")}})).collect::<Vec<_>>()});
    let branches =
        |n: usize| json!({"any": (0..n).map(|i| json!({"pid": 100_000 + i})).collect::<Vec<_>>()});
    let names = |n: usize| json!({"usename": (0..n).map(|i| format!("u{i}")).collect::<Vec<_>>()});
    // Nesting at the limit, regexes at `n` of its leaves (`pattern` with the leaf's number
    // appended), arrays, a limit.
    let all_at_once = |n: usize, pattern: &str| {
        let mut count = 0;
        let leaf = |i: usize| {
            if i <= n {
                json!({"query": {"regex": format!("{pattern}{i}")}, "datname": ["a", "postgres"]})
            } else {
                json!({"pid": i})
            }
        };
        let nested = tree(7, &leaf, &mut count);
        let mut names: Vec<String> = (0..400).map(|i| format!("u{i}")).collect();
        names.push("app".into());
        json!({"any": [nested], "usename": names, "limit": 5})
    };
    vec![
        (
            "as many different regexes as fit",
            fit(&regexes),
            Some("budget of 16 MiB"),
        ),
        ("as many `any` branches as fit", fit(&branches), None),
        ("the longest array of names that fits", fit(&names), None),
        (
            "8 levels of any/exclude, 1,458 leaves",
            {
                let mut n = 0;
                json!({"any": [tree(7, &|i| json!({"pid": 100_000 + i}), &mut n)]})
            },
            None,
        ),
        (
            "all at once: nesting, 120 regexes, arrays, limit",
            all_at_once(120, "(?i)^select .*"),
            None,
        ),
        (
            "all at once, with regexes past the budget",
            all_at_once(10, "\\w{15}"),
            Some("budget of 16 MiB"),
        ),
    ]
}

#[test]
fn the_worst_filters_of_each_shape_cost_a_bounded_time_and_memory() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    cluster.create_role("watcher", "IN ROLE pg_read_all_stats");
    let tag = tag("worst_cases");
    let mut text = String::new();
    while text.len() < 940 {
        text.push_str("select data from gamma where beta = 42 ");
    }
    let sessions: Vec<(Session, Pending)> = (0..50)
        .map(|_| {
            let s = cluster.session("app", &tag);
            let p = s.start(&format!("SELECT '{text}', pg_sleep(600)"));
            cluster.wait_until(s.pid, "a.wait_event = 'PgSleep'");
            (s, p)
        })
        .collect();
    let mut report = String::new();
    for (name, filter, refused) in worst_cases() {
        let text = filter.to_string();
        assert!(
            jsonb_len(&filter) <= 64 * 1024,
            "{name}: {} bytes",
            jsonb_len(&filter)
        );
        let sql = format!(
            "SELECT * FROM reaper.preview_matching('{}')",
            text.replace('\'', "''")
        );
        let (took, peak_kb, result) = cost_in_fresh_backend(&cluster, "watcher", &sql);
        match (&result, refused) {
            (Ok(_), None) => {}
            (Err(e), Some(needle)) => {
                assert_eq!(sqlstate(e), Some("22023"), "{name}: {e}");
                let message = e.as_db_error().unwrap().message();
                assert!(message.contains(needle), "{name}: {message}");
            }
            _ => panic!("{name}: {result:?}"),
        }
        assert!(peak_kb < 64 * 1024, "{name}: peak rose {peak_kb} kB");
        report += &format!(
            "| {name} | {} | {} | {:.1} | {:.1} |\n",
            jsonb_len(&filter),
            if refused.is_some() {
                "refused (22023)"
            } else {
                "matched"
            },
            took.as_secs_f64() * 1000.0,
            peak_kb as f64 / 1024.0
        );
    }
    for (_, pending) in &sessions {
        assert!(pending.still_running_after(Duration::from_millis(1)));
    }
    record_figures(
        "32-worst-case-filters",
        &format!(
            "## The worst filters of each shape\n\n`bad_input_catalogue.rs`: the costliest filter of each shape within the bounds (64 KiB of \
             text, 8 levels of nesting, 10,000 items per array, the 16 MiB regex budget), and past them, each given to \
             `preview_matching` in a fresh backend of a role with `pg_read_all_stats`, with 50 sessions whose 1 kB queries it \
             matches; the peak is the rise of the backend's VmHWM.\n\n\
             | filter | bytes | result | ms | peak MB |\n| --- | ---: | --- | ---: | ---: |\n{report}"
        ),
    );
}
