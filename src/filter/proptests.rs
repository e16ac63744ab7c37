//! Property tests: no input panics; validate-then-match agrees with an independent reference
//! matcher written here straight from the README's rules; normalizing is idempotent.
//! `PROPTEST_CASES` raises the case count (`make fuzz`).

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::*;

const NOW: i64 = 10_000_000_000;
const CTX: MatchContext = MatchContext {
    self_pid: 7,
    now: NOW,
};

const NAMES: &[&str] = &[
    "app",
    "batch",
    "web",
    "",
    "client backend",
    "walsender",
    "idle",
    "active",
];
const TEXT_KEYS: &[&str] = &[
    "usename",
    "datname",
    "application_name",
    "client_hostname",
    "state",
    "backend_type",
    "wait_event_type",
    "wait_event",
    "query",
];
const AGE_KEYS: &[&str] = &[
    "min_state_age",
    "min_query_age",
    "min_xact_age",
    "min_backend_age",
];

/// Exact backend types drawn from this pool (every one in the default vocabulary).
const BACKEND_TYPES: &[&str] = &[
    "client backend",
    "walsender",
    "pg_cron launcher",
    "autovacuum worker",
];

fn text_value(key: &'static str) -> BoxedStrategy<Value> {
    let pool: Vec<&str> = match key {
        "state" => STATES.to_vec(),
        "backend_type" => BACKEND_TYPES.to_vec(),
        _ => NAMES.to_vec(),
    };
    let one = proptest::sample::select(pool);
    prop_oneof![
        one.clone().prop_map(|s| json!(s)),
        proptest::collection::vec(one, 1..3).prop_map(|v| json!(v)),
        proptest::sample::select(vec!["^a", "e", "^$", "b|w", "(?i)APP", "wal"])
            .prop_map(|r| json!({ "regex": r })),
    ]
    .boxed()
}

fn leaf() -> BoxedStrategy<(String, Value)> {
    prop_oneof![
        proptest::sample::select(TEXT_KEYS.to_vec())
            .prop_flat_map(|k| text_value(k).prop_map(move |v| (k.to_string(), v))),
        proptest::sample::select(vec!["local", "10.0.0.0/8", "10.1.2.3", "::1", "0.0.0.0/0"])
            .prop_map(|a| ("client_addr".to_string(), json!(a))),
        (1i32..6).prop_map(|p| ("pid".to_string(), json!(p))),
        proptest::collection::vec(1i32..6, 1..3).prop_map(|p| ("pid".to_string(), json!(p))),
        (proptest::sample::select(AGE_KEYS.to_vec()), 0i64..5_000)
            .prop_map(|(k, ms)| (k.to_string(), json!(ms))),
        (proptest::sample::select(AGE_KEYS.to_vec()), 0i64..5)
            .prop_map(|(k, s)| (k.to_string(), json!(format!("{s} seconds")))),
        any::<bool>().prop_map(|b| ("blocking".to_string(), json!(b))),
        any::<bool>().prop_map(|b| ("blocked".to_string(), json!(b))),
        Just(("all".to_string(), json!(true))),
    ]
    .boxed()
}

fn node() -> impl Strategy<Value = Value> {
    let base = proptest::collection::vec(leaf(), 1..4)
        .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>()));
    base.prop_recursive(3, 24, 3, |inner| {
        (
            proptest::collection::vec(leaf(), 0..3),
            proptest::option::of(proptest::collection::vec(inner.clone(), 1..3)),
            proptest::option::of(inner),
        )
            .prop_map(|(kv, any, exclude)| {
                let mut o: Map<String, Value> = kv.into_iter().collect();
                if let Some(any) = any {
                    o.insert("any".into(), Value::Array(any));
                }
                if let Some(exclude) = exclude {
                    o.insert("exclude".into(), exclude);
                }
                if o.keys().all(|k| k == "exclude") {
                    o.insert("all".into(), json!(true));
                }
                Value::Object(o)
            })
    })
}

fn top_filter() -> impl Strategy<Value = Value> {
    (
        node(),
        proptest::option::of(1u64..4),
        proptest::sample::select(Order::ALL.to_vec()),
        any::<bool>(),
    )
        .prop_map(|(mut f, limit, order, su)| {
            let o = f.as_object_mut().unwrap();
            if let Some(l) = limit {
                o.insert("limit".into(), json!(l));
            }
            o.insert("order".into(), json!(order.name()));
            o.insert("include_superusers".into(), json!(su));
            f
        })
}

fn opt_name() -> impl Strategy<Value = Option<String>> {
    proptest::option::weighted(
        0.85,
        proptest::sample::select(NAMES.to_vec()).prop_map(String::from),
    )
}

fn opt_time() -> impl Strategy<Value = Option<i64>> {
    proptest::option::weighted(0.85, (0i64..6_000_000).prop_map(|age| NOW - age))
}

fn arb_session() -> impl Strategy<Value = Session> {
    let names = (
        opt_name(),
        opt_name(),
        opt_name(),
        opt_name(),
        opt_name(),
        opt_name(),
    );
    let more = (
        opt_name(),
        proptest::sample::select(BACKEND_TYPES.to_vec()),
        proptest::sample::select(STATES.to_vec()),
    );
    let addr = proptest::sample::select(vec![
        (Some("10.1.2.3"), Some(5432)),
        (Some("192.168.1.1"), Some(5432)),
        (Some("::1"), Some(5432)),
        (None, Some(-1)),
        (None, None),
    ]);
    let times = (opt_time(), opt_time(), opt_time(), opt_time());
    let flags = (1i32..8, any::<bool>(), any::<bool>(), any::<bool>());
    (names, more, addr, times, flags).prop_map(
        |((u, d, a, h, wt, w), (q, bt, st), (ca, cp), (bs, xs, qs, sc), (pid, su, bl, bd))| {
            Session {
                pid,
                backend_type: Some(bt.to_string()),
                client_backend: bt == "client backend",
                usename: u,
                datname: d,
                application_name: a,
                client_hostname: h,
                state: Some(st.to_string()),
                wait_event_type: wt,
                wait_event: w,
                query: q,
                client_addr: ca.map(|s| s.parse().unwrap()),
                client_port: cp,
                backend_start: bs,
                xact_start: xs,
                query_start: qs,
                state_change: sc,
                superuser: su,
                blocking: bl,
                blocked: bd,
            }
        },
    )
}

// ---- The reference matcher: reads the JSON directly, shares no code with the module. ----

fn ref_text(s: &Session, key: &str) -> Option<String> {
    match key {
        "usename" => s.usename.clone(),
        "datname" => s.datname.clone(),
        "application_name" => s.application_name.clone(),
        "client_hostname" => s.client_hostname.clone(),
        "state" => s.state.clone(),
        "backend_type" => s.backend_type.clone(),
        "wait_event_type" => s.wait_event_type.clone(),
        "wait_event" => s.wait_event.clone(),
        "query" => s.query.clone(),
        _ => unreachable!(),
    }
}

fn ref_age_ms(v: &Value) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap(),
        Value::String(s) => s.split(' ').next().unwrap().parse::<i64>().unwrap() * 1000,
        _ => unreachable!(),
    }
}

fn ref_addr(s: &Session, want: &str) -> bool {
    match want {
        "local" => s.client_addr.is_none() && s.client_port == Some(-1),
        "0.0.0.0/0" => s.client_addr.is_some_and(|a| a.is_ipv4()),
        "10.0.0.0/8" => s
            .client_addr
            .is_some_and(|a| a.to_string().starts_with("10.")),
        exact => s.client_addr.is_some_and(|a| a.to_string() == exact),
    }
}

/// (matched, strongest backend_type naming: 0 none, 1 regex, 2 exact)
fn ref_node(f: &Map<String, Value>, s: &Session) -> (bool, u8) {
    let mut naming = 0;
    for (k, v) in f {
        let ok = match k.as_str() {
            k if TEXT_KEYS.contains(&k) => {
                let actual = ref_text(s, k);
                let hit = match (v, actual.as_deref()) {
                    (_, None) => false,
                    (Value::String(want), Some(a)) => want == a,
                    (Value::Array(list), Some(a)) => list.iter().any(|w| w == a),
                    (Value::Object(o), Some(a)) => regex::Regex::new(o["regex"].as_str().unwrap())
                        .unwrap()
                        .is_match(a),
                    _ => unreachable!(),
                };
                if hit && k == "backend_type" {
                    naming = naming.max(if v.is_object() { 1 } else { 2 });
                }
                hit
            }
            "client_addr" => ref_addr(s, v.as_str().unwrap()),
            "pid" => match v {
                Value::Array(list) => list.iter().any(|p| p.as_i64() == Some(s.pid as i64)),
                p => p.as_i64() == Some(s.pid as i64),
            },
            k if AGE_KEYS.contains(&k) => {
                let ts = match k {
                    "min_state_age" => s.state_change,
                    "min_query_age" => s.query_start,
                    "min_xact_age" => s.xact_start,
                    _ => s.backend_start,
                };
                ts.is_some_and(|t| NOW - t >= ref_age_ms(v) * 1000)
            }
            "blocking" => v.as_bool() == Some(s.blocking),
            "blocked" => v.as_bool() == Some(s.blocked),
            "all" => true,
            "any" => {
                let hits: Vec<u8> = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| ref_node(b.as_object().unwrap(), s))
                    .filter(|(m, _)| *m)
                    .map(|(_, n)| n)
                    .collect();
                naming = naming.max(hits.iter().copied().max().unwrap_or(0));
                !hits.is_empty()
            }
            "exclude" => !ref_node(v.as_object().unwrap(), s).0,
            "limit" | "order" | "include_superusers" => true,
            _ => unreachable!(),
        };
        if !ok {
            return (false, 0);
        }
    }
    (true, naming)
}

fn ref_matches(f: &Value, s: &Session) -> bool {
    let o = f.as_object().unwrap();
    if s.pid == CTX.self_pid {
        return false;
    }
    if s.superuser && o.get("include_superusers") != Some(&json!(true)) {
        return false;
    }
    let (hit, naming) = ref_node(o, s);
    hit && match s.backend_type.as_deref().unwrap() {
        "client backend" => true,
        "pg_cron launcher" => naming == 2,
        _ => naming >= 1,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,300}") {
        let _ = Filter::parse_str(&text, &Vocabulary::default());
    }

    #[test]
    fn arbitrary_json_never_panics(v in arb_json()) {
        let _ = Filter::from_value(&v, &Vocabulary::default());
        let _ = Filter::parse_str(&v.to_string(), &Vocabulary::default());
    }

    #[test]
    fn matcher_agrees_with_reference(f in top_filter(), sessions in proptest::collection::vec(arb_session(), 1..8)) {
        let filter = Filter::from_value(&f, &Vocabulary::default()).unwrap();
        for s in &sessions {
            prop_assert_eq!(filter.matches(s, &CTX), ref_matches(&f, s), "filter {} session {:?}", f, s);
        }
        let picked = filter.select(&sessions, &CTX);
        let all = sessions.iter().filter(|s| ref_matches(&f, s)).count();
        let limit = f.get("limit").and_then(Value::as_u64).map_or(all, |l| all.min(l as usize));
        prop_assert_eq!(picked.len(), limit);
    }

    #[test]
    fn normalizing_is_idempotent(f in top_filter()) {
        let once = Filter::from_value(&f, &Vocabulary::default()).unwrap().to_json();
        let twice = Filter::from_value(&once, &Vocabulary::default()).unwrap().to_json();
        prop_assert_eq!(&once, &twice);
        // And the text form parses to the same filter.
        let again = Filter::parse_str(&once.to_string(), &Vocabulary::default()).unwrap().to_json();
        prop_assert_eq!(once, again);
    }
}

/// Any JSON, biased towards the filter's own keys so that deep paths get exercised.
fn arb_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        proptest::sample::select(TEXT_KEYS.to_vec()).prop_map(String::from),
        proptest::sample::select(vec![
            "pid",
            "client_addr",
            "any",
            "exclude",
            "all",
            "limit",
            "order",
            "regex",
            "include_superusers",
            "min_state_age",
            "blocking",
        ])
        .prop_map(String::from),
        ".{0,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((key.clone(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}
