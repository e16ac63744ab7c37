//! Property tests: no input panics; validate-then-match agrees with an independent reference
//! matcher written here straight from the README's rules; normalizing is idempotent.
//! `PROPTEST_CASES` raises the case count (`make fuzz`).

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::*;

const NOW: i64 = 10_000_000_000;
static PROTECTED: std::sync::LazyLock<Protected> = std::sync::LazyLock::new(|| Protected {
    applications: vec!["web".into()],
    roles: vec!["batch".into()],
});

fn ctx() -> MatchContext<'static> {
    MatchContext {
        self_pid: 7,
        now: NOW,
        protected: &PROTECTED,
        interrupt: no_interrupt,
    }
}

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
    "min_blocked_age",
    "min_blocking_age",
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
        Just(("blocking".to_string(), json!("root"))),
        any::<bool>().prop_map(|b| ("blocked".to_string(), json!(b))),
        (1u32..5).prop_map(|n| ("min_blocked_sessions".to_string(), json!(n))),
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

/// A filter without `holding_up` (what a `holding_up` key may hold).
fn plain_node() -> impl Strategy<Value = Value> {
    proptest::collection::vec(leaf(), 1..3)
        .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>()))
}

/// A node, sometimes with a `holding_up` key of its own or in an `exclude`.
fn node_with_holding_up() -> impl Strategy<Value = Value> {
    (
        node(),
        proptest::option::weighted(0.3, plain_node()),
        proptest::option::weighted(0.1, plain_node()),
    )
        .prop_map(|(mut f, held, excluded)| {
            let o = f.as_object_mut().unwrap();
            if let Some(held) = held {
                o.insert("holding_up".into(), held);
            }
            if let Some(excluded) = excluded {
                o.insert("exclude".into(), json!({"holding_up": excluded}));
            }
            f
        })
}

fn top_filter() -> impl Strategy<Value = Value> {
    (
        node_with_holding_up(),
        proptest::option::of(1u64..4),
        proptest::sample::select(Order::all()),
        (any::<bool>(), any::<bool>()),
        proptest::option::of((
            1u64..3,
            proptest::sample::subsequence(GroupField::ALL.to_vec(), 0..=2),
        )),
    )
        .prop_map(|(mut f, limit, order, (su, prot), quota)| {
            let o = f.as_object_mut().unwrap();
            if let Some(l) = limit {
                o.insert("limit".into(), json!(l));
            }
            o.insert("order".into(), json!(order.name()));
            o.insert("include_superusers".into(), json!(su));
            o.insert("include_protected".into(), json!(prot));
            if let Some((keep, per)) = quota {
                o.insert("keep".into(), json!(keep));
                if !per.is_empty() {
                    let names: Vec<&str> = per.iter().map(|f| f.name()).collect();
                    o.insert("per".into(), json!(names));
                }
            }
            f
        })
}

fn opt_name() -> impl Strategy<Value = Option<String>> {
    proptest::option::weighted(
        0.85,
        proptest::sample::select(NAMES.to_vec()).prop_map(String::from),
    )
}

/// PostgreSQL's conflict table for the default lock method (lock.c's LockConflicts): for each
/// mode, the modes it conflicts with.
const LOCK_CONFLICTS: [u32; MAX_LOCK_MODE + 1] = {
    const fn bits(modes: &[u32]) -> u32 {
        let mut m = 0;
        let mut i = 0;
        while i < modes.len() {
            m |= 1 << modes[i];
            i += 1;
        }
        m
    }
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
};

fn opt_time() -> impl Strategy<Value = Option<i64>> {
    proptest::option::weighted(0.85, (0i64..6_000_000).prop_map(|age| NOW - age))
}

/// A generated session, and the pids it waits for (its `pg_blocking_pids`) with the start of
/// its wait: the capture the chains work its lock facts out from.
#[derive(Debug, Clone)]
struct Gen {
    s: Session,
    by: Vec<i32>,
    wait_start: Option<i64>,
}

impl AsRef<Session> for Gen {
    fn as_ref(&self) -> &Session {
        &self.s
    }
}

impl AsMut<Session> for Gen {
    fn as_mut(&mut self) -> &mut Session {
        &mut self.s
    }
}

/// The pids `pid` waits for.
fn by_of(all: &[Gen], pid: i32) -> &[i32] {
    all.iter()
        .find(|g| g.s.pid == pid)
        .map_or(&[], |g| g.by.as_slice())
}

fn arb_session() -> impl Strategy<Value = Gen> {
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
    let flags = (
        1i32..8,
        any::<bool>(),
        proptest::collection::vec(1i32..9, 0..3),
        opt_time(),
        proptest::bool::weighted(0.15),
    );
    (names, more, addr, times, flags).prop_map(
        |((u, d, a, h, wt, w), (q, bt, st), (ca, cp), (bs, xs, qs, sc), (pid, su, by, ws, hid))| {
            let mut blocked_by: Vec<i32> = by.into_iter().filter(|b| *b != pid).collect();
            blocked_by.sort_unstable();
            blocked_by.dedup();
            let s = Session {
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
                hidden: hid,
                locks: LockFacts::default(),
            };
            Gen {
                s,
                wait_start: if blocked_by.is_empty() { None } else { ws },
                by: blocked_by,
            }
        },
    )
}

/// Sessions with distinct pids (1, 2, ...; the caller is 7) whose lock facts are worked out
/// from their `blocked_by` and `wait_start` by the module's own chains.
fn arb_sessions() -> impl Strategy<Value = Vec<Gen>> {
    proptest::collection::vec(arb_session(), 1..9).prop_map(|mut sessions| {
        for (i, g) in sessions.iter_mut().enumerate() {
            g.s.pid = i as i32 + 1;
            let pid = g.s.pid;
            g.by.retain(|&b| b != pid);
            if g.by.is_empty() {
                g.wait_start = None;
            }
        }
        let everything = ChainNeeds {
            count_up_to: Some(u32::MAX),
            longest_wait_behind: true,
            holding_up: false,
        };
        rechained(sessions, everything)
    })
}

/// The sessions with their lock facts worked out again for `needs` (as the live path and the
/// replay work them out for a filter: counts capped at what it asks).
fn rechained(mut sessions: Vec<Gen>, needs: ChainNeeds) -> Vec<Gen> {
    let chains = LockChains::new(as_lists(&sessions), needs, &mut || {});
    for g in &mut sessions {
        g.s.locks = chains.facts(g.s.pid);
    }
    sessions
}

/// `rechained`, and each session marked with the `holding_up` keys of `filter` it satisfies.
fn rechained_for(sessions: Vec<Gen>, filter: &Filter) -> Vec<Gen> {
    let needs = filter.chain_needs().unwrap_or_default();
    let chains = LockChains::new(as_lists(&sessions), needs, &mut || {});
    let mut sessions = rechained(sessions, needs);
    filter.mark_holding_up(&mut sessions, &ctx(), &chains);
    sessions
}

/// The capture as the replay gives it to the chains: each waiting pid its own lock group.
fn as_lists(sessions: &[Gen]) -> Waits {
    Waits {
        waiting: sessions
            .iter()
            .filter(|g| !g.by.is_empty())
            .map(|g| WaitingProcess {
                pid: g.s.pid,
                group: g.s.pid,
                wait_start: g.wait_start,
            })
            .collect(),
        lists: sessions.iter().map(|g| (g.s.pid, g.by.clone())).collect(),
        queues: Vec::new(),
    }
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

/// The pids waiting behind `pid`, directly or through others: grown until nothing changes
/// (the module walks the graph instead).
fn behind(all: &[Gen], pid: i32) -> std::collections::BTreeSet<i32> {
    let mut set = std::collections::BTreeSet::new();
    loop {
        let before = set.len();
        for g in all {
            if g.s.pid != pid && g.by.iter().any(|b| *b == pid || set.contains(b)) {
                set.insert(g.s.pid);
            }
        }
        if set.len() == before {
            return set;
        }
    }
}

/// `behind`, and `pid` itself when it waits behind itself (a cycle): whom it holds up.
fn behind_in_a_cycle_too(all: &[Gen], pid: i32) -> std::collections::BTreeSet<i32> {
    let mut set = std::collections::BTreeSet::new();
    loop {
        let before = set.len();
        for g in all {
            if g.by.iter().any(|b| *b == pid || set.contains(b)) {
                set.insert(g.s.pid);
            }
        }
        if set.len() == before {
            return set;
        }
    }
}

/// (matched, strongest backend_type naming: 0 none, 1 regex, 2 exact)
fn ref_node(f: &Map<String, Value>, s: &Session, all: &[Gen]) -> (bool, u8) {
    let wait_start = |pid: i32| all.iter().find(|g| g.s.pid == pid)?.wait_start;
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
                    "min_blocked_age" => wait_start(s.pid),
                    "min_blocking_age" => behind(all, s.pid)
                        .iter()
                        .filter_map(|p| wait_start(*p))
                        .min(),
                    _ => s.backend_start,
                };
                ts.is_some_and(|t| NOW - t >= ref_age_ms(v) * 1000)
            }
            "blocking" => {
                let blocks = !behind(all, s.pid).is_empty();
                let waits = !by_of(all, s.pid).is_empty();
                match v {
                    Value::Bool(b) => *b == blocks,
                    _ => blocks && !waits,
                }
            }
            "blocked" => v.as_bool() == Some(!by_of(all, s.pid).is_empty()),
            "min_blocked_sessions" => behind(all, s.pid).len() as u64 >= v.as_u64().unwrap(),
            // Someone waiting behind it, directly or through others, matches the sub-filter
            // (as a row rule: no safe defaults for whom it protects).
            "holding_up" => {
                let held = v.as_object().unwrap();
                behind_in_a_cycle_too(all, s.pid).iter().any(|p| {
                    all.iter()
                        .find(|g| g.s.pid == *p)
                        .is_some_and(|g| ref_node(held, &g.s, all).0)
                })
            }
            "all" => true,
            "any" => {
                let hits: Vec<u8> = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| ref_node(b.as_object().unwrap(), s, all))
                    .filter(|(m, _)| *m)
                    .map(|(_, n)| n)
                    .collect();
                naming = naming.max(hits.iter().copied().max().unwrap_or(0));
                !hits.is_empty()
            }
            "exclude" => !ref_node(v.as_object().unwrap(), s, all).0,
            "limit" | "order" | "include_superusers" | "include_protected" | "keep" | "per" => true,
            _ => unreachable!(),
        };
        if !ok {
            return (false, 0);
        }
    }
    (true, naming)
}

/// Matches, protection aside.
fn ref_hit(f: &Value, s: &Session, all: &[Gen]) -> bool {
    let o = f.as_object().unwrap();
    if s.pid == 7 {
        return false;
    }
    if s.superuser && o.get("include_superusers") != Some(&json!(true)) {
        return false;
    }
    let (hit, naming) = ref_node(o, s, all);
    hit && match s.backend_type.as_deref().unwrap() {
        "client backend" => true,
        "pg_cron launcher" => naming == 2,
        _ => naming >= 1,
    }
}

fn ref_protected(f: &Value, s: &Session) -> bool {
    f.get("include_protected") != Some(&json!(true))
        && (s.application_name.as_deref() == Some("web") || s.usename.as_deref() == Some("batch"))
}

fn ref_matches(f: &Value, s: &Session, all: &[Gen]) -> bool {
    ref_hit(f, s, all) && !ref_protected(f, s)
}

/// The victims' pids in order: sorted, less the first `keep` of each group, `limit` of them.
fn ref_select(f: &Value, all: &[Gen]) -> Vec<i32> {
    let order = f["order"].as_str().unwrap();
    let (which, column) = order.split_once('_').unwrap();
    let time = |s: &Session| match column {
        "backend" => s.backend_start,
        "xact" => s.xact_start,
        "query" => s.query_start,
        _ => s.state_change,
    };
    let mut hits: Vec<&Session> = all
        .iter()
        .map(|g| &g.s)
        .filter(|s| ref_matches(f, s, all))
        .collect();
    if f.get("keep").is_some() {
        hits.retain(|s| !s.hidden);
    }
    hits.sort_by(|a, b| {
        let by_time = match (time(a), time(b)) {
            (Some(x), Some(y)) if which == "newest" => y.cmp(&x),
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        by_time.then(a.pid.cmp(&b.pid))
    });
    if let Some(keep) = f.get("keep").and_then(Value::as_u64) {
        let per: Vec<String> = f
            .get("per")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        let key = |s: &Session| -> Vec<Option<String>> {
            per.iter()
                .map(|c| match c.as_str() {
                    "usename" => s.usename.clone(),
                    "datname" => s.datname.clone(),
                    "application_name" => s.application_name.clone(),
                    _ => s.client_addr.map(|a| a.to_string()),
                })
                .collect()
        };
        let mut seen: Vec<(Vec<Option<String>>, u64)> = Vec::new();
        hits.retain(|s| {
            let k = key(s);
            match seen.iter_mut().find(|(g, _)| *g == k) {
                Some((_, n)) => {
                    *n += 1;
                    *n > keep
                }
                None => {
                    seen.push((k, 1));
                    1 > keep
                }
            }
        });
    }
    let mut pids: Vec<i32> = hits.iter().map(|s| s.pid).collect();
    if let Some(limit) = f.get("limit").and_then(Value::as_u64) {
        pids.truncate(limit as usize);
    }
    pids
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
    fn matcher_agrees_with_reference(f in top_filter(), sessions in arb_sessions()) {
        let filter = Filter::from_value(&f, &Vocabulary::default()).unwrap();
        let sessions = rechained_for(sessions, &filter);
        for g in &sessions {
            let s = &g.s;
            prop_assert_eq!(filter.matches(s, &ctx()), ref_matches(&f, s, &sessions), "filter {} session {:?}", f, g);
        }
        let picked = filter.select(&sessions, &ctx());
        let pids: Vec<i32> = picked.victims.iter().map(|&i| sessions[i].s.pid).collect();
        prop_assert_eq!(pids, ref_select(&f, &sessions), "filter {}", f);
        let protected = sessions
            .iter()
            .filter(|g| ref_hit(&f, &g.s, &sessions) && ref_protected(&f, &g.s))
            .count();
        prop_assert_eq!(picked.protected, protected);
        let hidden = if f.get("keep").is_some() {
            sessions.iter().filter(|g| ref_matches(&f, &g.s, &sessions) && g.s.hidden).count()
        } else {
            0
        };
        prop_assert_eq!(picked.hidden_in_quota, hidden);
    }

    #[test]
    fn chains_agree_with_the_reference_on_larger_graphs(
        edges in proptest::collection::vec(proptest::collection::vec(0i32..40, 0..4), 1..40),
        starts in proptest::collection::vec(proptest::option::of(0i64..1000), 40),
        cap in 1u32..50,
    ) {
        // pid i+1 waits for the pids in edges[i] (0 is a prepared transaction).
        let sessions: Vec<Gen> = edges
            .iter()
            .enumerate()
            .map(|(i, by)| {
                let pid = i as i32 + 1;
                let mut blocked_by: Vec<i32> = by.iter().copied().filter(|&b| b != pid).collect();
                blocked_by.sort_unstable();
                blocked_by.dedup();
                Gen {
                    s: Session { pid, ..Session::default() },
                    wait_start: if blocked_by.is_empty() { None } else { starts[i] },
                    by: blocked_by,
                }
            })
            .collect();
        let chains = LockChains::new(
            as_lists(&sessions),
            ChainNeeds { count_up_to: Some(cap), longest_wait_behind: true, holding_up: false },
            &mut || {},
        );
        for pid in 0..=edges.len() as i32 {
            let facts = chains.facts(pid);
            let behind = behind(&sessions, pid);
            prop_assert_eq!(facts.blocked_sessions, (behind.len() as u32).min(cap), "pid {}", pid);
            let longest = behind
                .iter()
                .filter_map(|p| sessions.iter().find(|x| x.s.pid == *p)?.wait_start)
                .min();
            prop_assert_eq!(facts.longest_wait_behind, longest, "pid {}", pid);
            prop_assert_eq!(facts.blocking, !behind.is_empty(), "pid {}", pid);
        }
    }

    #[test]
    fn lock_queues_give_the_facts_their_pg_blocking_pids_lists_give(
        queues in proptest::collection::vec(
            (
                proptest::collection::vec((0i32..8, 1u32..512), 0..4),
                proptest::collection::vec((1i32..8, 1u8..9), 0..8),
            ),
            1..4,
        ),
        starts in proptest::collection::vec(proptest::option::of(0i64..1000), 40),
        cap in 1u32..20,
    ) {
        // Holders (group, modes held: a bit per mode 1..=8; group 0 is a prepared transaction)
        // and waiters (group, mode) of each lock, with PostgreSQL's conflict table; a group may
        // wait more than once (a parallel query's members). The lists are what
        // pg_blocking_pids gives, worked out naively, pair by pair.
        let queues: Vec<LockQueue> = queues
            .into_iter()
            .map(|(holders, waiters)| LockQueue {
                conflicts: LOCK_CONFLICTS,
                holders: holders
                    .into_iter()
                    .map(|(group, modes)| Holder { group, modes: modes << 1 })
                    .collect(),
                waiters: waiters.into_iter().map(|(group, mode)| Queued { group, mode }).collect(),
            })
            .collect();
        let mut waiting = Vec::new();
        let mut lists = Vec::new();
        for q in &queues {
            for (i, w) in q.waiters.iter().enumerate() {
                let against = LOCK_CONFLICTS[usize::from(w.mode)];
                let mut blockers: Vec<i32> = q
                    .holders
                    .iter()
                    .filter(|h| h.group != w.group && against & h.modes != 0)
                    .map(|h| h.group)
                    .chain(
                        q.waiters[..i]
                            .iter()
                            .filter(|a| a.group != w.group && against & (1 << a.mode) != 0)
                            .map(|a| a.group),
                    )
                    .collect();
                blockers.sort_unstable();
                blockers.dedup();
                let pid = 1000 + waiting.len() as i32;
                waiting.push(WaitingProcess { pid, group: w.group, wait_start: starts[waiting.len()] });
                lists.push((w.group, blockers));
            }
        }
        let needs = ChainNeeds { count_up_to: Some(cap), longest_wait_behind: true, holding_up: false };
        let from_queues = LockChains::new(
            Waits { waiting: waiting.clone(), queues, lists: Vec::new() },
            needs,
            &mut || {},
        );
        let from_lists = LockChains::new(Waits { waiting, queues: Vec::new(), lists }, needs, &mut || {});
        for group in 0..8 {
            prop_assert_eq!(from_queues.facts(group), from_lists.facts(group), "group {}", group);
        }
        prop_assert_eq!(
            from_queues.a_prepared_transaction_blocks(),
            from_lists.a_prepared_transaction_blocks()
        );
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
            "include_protected",
            "min_state_age",
            "min_blocking_age",
            "min_blocked_sessions",
            "blocking",
            "holding_up",
            "keep",
            "per",
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
