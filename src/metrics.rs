//! Counters for monitoring, in shared memory: what every signalling call and policy run did,
//! by policy, action and outcome, since the server started. `reaper.metrics()` turns them,
//! with the worker's gauges, into one row per series for Prometheus-style scrapers: low
//! cardinality (no pid, no query), counters ending in `_total`, durations in seconds.
//!
//! Counted where the work is done, whatever the transaction does afterwards: a signal that was
//! sent stays sent when its caller rolls back. Kept across worker restarts; reset only when the
//! server restarts (`reset_timestamp_seconds` says since when they count).

use pgrx::lwlock::PgLwLock;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;

use crate::report::Outcome;
use crate::worker::status::Text;

/// The actions a row can be counted under, in this order.
const ACTIONS: [&str; 5] = [
    "preview",
    "cancel",
    "terminate",
    "cancel_then_terminate",
    "report",
];

/// Policies counted (each database's policies share a name's entry). Past that, one more entry
/// counts them all under the policy label `(other)`; entry 0 counts direct calls (label `''`).
const MAX_ENTRIES: usize = 512;

/// The longest policy name kept as a label, in bytes.
const NAME_BYTES: usize = 256;

#[derive(Clone, Copy)]
struct Entry {
    policy: Text<NAME_BYTES>,
    used: bool,
    /// Result rows by action and outcome.
    rows: [[u64; Outcome::ALL.len()]; ACTIONS.len()],
    /// Runs (direct calls for entry 0) by action, failed runs, trips of the circuit breaker.
    runs: [u64; ACTIONS.len()],
    failures: u64,
    trips: u64,
}

impl Entry {
    const EMPTY: Entry = Entry {
        policy: Text::EMPTY,
        used: false,
        rows: [[0; Outcome::ALL.len()]; ACTIONS.len()],
        runs: [0; ACTIONS.len()],
        failures: 0,
        trips: 0,
    };
}

pub struct Counters {
    /// Since when the counters count (PostgreSQL timestamp): the first count or look after the
    /// server (re)started; 0 before.
    since: i64,
    /// Entries in use: 0 is direct calls, the last is `(other)`.
    len: usize,
    entries: [Entry; MAX_ENTRIES + 2],
}

impl Counters {
    pub const fn new() -> Counters {
        Counters {
            since: 0,
            len: 0,
            entries: [Entry::EMPTY; MAX_ENTRIES + 2],
        }
    }

    /// The entry of `policy` (None: direct calls), made if missing.
    fn entry(&mut self, policy: Option<&str>) -> &mut Entry {
        let Some(name) = policy else {
            self.entries[0].used = true;
            return &mut self.entries[0];
        };
        let mut key = Text::<NAME_BYTES>::EMPTY;
        key.set(name);
        let found = (1..=self.len.min(MAX_ENTRIES))
            .find(|&i| self.entries[i].policy.as_bytes() == key.as_bytes());
        let i = match found {
            Some(i) => i,
            None if self.len < MAX_ENTRIES => {
                self.len += 1;
                self.entries[self.len].policy = key;
                self.len
            }
            None => {
                let other = MAX_ENTRIES + 1;
                self.entries[other].policy.set("(other)");
                other
            }
        };
        self.entries[i].used = true;
        &mut self.entries[i]
    }
}

impl Default for Counters {
    fn default() -> Counters {
        Counters::new()
    }
}

// SAFETY: fixed-size plain data (integers, bytes, booleans); no pointer.
unsafe impl PGRXSharedMemory for Counters {}

// SAFETY: the name is unique to pg_reaper; set up by pg_shmem_init! in `register`, from
// _PG_init, when the library is preloaded.
static COUNTERS: PgLwLock<Counters> = unsafe { PgLwLock::new(c"pg_reaper_metrics") };

/// Asks for the shared memory; from _PG_init while the postmaster loads the library.
pub fn register() {
    pgrx::pg_shmem_init!(COUNTERS = Counters::new());
}

fn action_index(action: &str) -> Option<usize> {
    ACTIONS.iter().position(|a| *a == action)
}

fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pgrx::pg_sys::GetCurrentTimestamp() }
}

/// Updates `policy`'s entry, if there is shared memory (the library is preloaded).
fn update(policy: Option<&str>, f: impl FnOnce(&mut Entry)) {
    if !crate::guc::preloaded() {
        return;
    }
    let t = now();
    let mut c = COUNTERS.exclusive();
    if c.since == 0 {
        c.since = t;
    }
    f(c.entry(policy));
}

/// A signalling call (policy None) or a policy's run, and its result rows. A direct preview
/// is not counted: it signals nothing.
fn count_run(policy: Option<&str>, action: &str, outcomes: impl Iterator<Item = Outcome>) {
    let Some(a) = action_index(action) else {
        return;
    };
    if policy.is_none() && action == "preview" {
        return;
    }
    // Tallied before the lock: the lock is held for a few additions only.
    let mut by_outcome = [0u64; Outcome::ALL.len()];
    for o in outcomes {
        by_outcome[o as usize] += 1;
    }
    update(policy, |e| {
        e.runs[a] += 1;
        for (n, add) in e.rows[a].iter_mut().zip(by_outcome) {
            *n += add;
        }
    });
}

/// A call or run being counted: `finish` counts its rows; if it ends in an error first (the
/// guard dropped while the error unwinds), the sessions it had signalled count as `signalled`,
/// their end unseen, and so does the run. (A FATAL skips it: the caller's process ends.)
pub struct RunCount {
    policy: Option<String>,
    action: &'static str,
    sent_before: u64,
    /// Sessions signalled, once known to grow no more (a cancel_then_terminate's terminates go
    /// to sessions it cancelled: signals then outnumber sessions).
    sessions: std::cell::Cell<Option<u64>>,
    finished: bool,
}

impl RunCount {
    pub fn start(policy: Option<&str>, action: &'static str) -> RunCount {
        RunCount {
            policy: policy.map(str::to_string),
            action,
            sent_before: crate::signal::delivered_so_far(),
            sessions: std::cell::Cell::new(None),
            finished: false,
        }
    }

    /// Every signal from now on goes to a session already signalled.
    pub fn no_more_sessions(&self) {
        self.sessions
            .set(Some(crate::signal::delivered_so_far() - self.sent_before));
    }

    pub fn finish(mut self, outcomes: impl Iterator<Item = Outcome>) {
        self.finished = true;
        count_run(self.policy.as_deref(), self.action, outcomes);
    }
}

impl Drop for RunCount {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let signals = crate::signal::delivered_so_far() - self.sent_before;
        let sent = self.sessions.get().map_or(signals, |n| n.min(signals));
        if sent > 0 {
            // Nothing here raises: a lock this backend never holds across an error, additions.
            count_run(
                self.policy.as_deref(),
                self.action,
                std::iter::repeat_n(Outcome::Signalled, sent as usize),
            );
        }
    }
}

/// A policy's run that failed (its rows, if any, were counted by `count_run`).
pub fn count_failure(policy: &str) {
    update(Some(policy), |e| e.failures += 1);
}

/// A policy's run that tripped its circuit breaker.
pub fn count_trip(policy: &str) {
    update(Some(policy), |e| e.trips += 1);
}

/// One series: metric, policy, action, outcome, value (the node label is added by the caller).
pub type Series = (&'static str, String, &'static str, &'static str, f64);

/// The counters as series, copied out under the lock and laid out after it is released.
pub fn counter_series() -> Vec<Series> {
    if !crate::guc::preloaded() {
        return Vec::new();
    }
    // Nothing counted before the first look or count: the counters count from then (set once,
    // under the exclusive lock; every later scrape shares the lock with the others).
    if COUNTERS.share().since == 0 {
        let t = now();
        let mut c = COUNTERS.exclusive();
        if c.since == 0 {
            c.since = t;
        }
    }
    let (since, entries): (i64, Vec<Entry>) = {
        let c = COUNTERS.share();
        let mut v: Vec<Entry> = c.entries[..=c.len.min(MAX_ENTRIES)].to_vec();
        v.push(c.entries[MAX_ENTRIES + 1]);
        (c.since, v)
    };
    let mut out = Vec::new();
    for e in entries.iter().filter(|e| e.used) {
        let policy = e.policy.get();
        for (a, action) in ACTIONS.iter().enumerate() {
            if e.runs[a] == 0 {
                continue;
            }
            out.push(("runs_total", policy.clone(), *action, "", e.runs[a] as f64));
            for (o, outcome) in Outcome::ALL.iter().enumerate() {
                if e.rows[a][o] > 0 {
                    out.push((
                        "signals_total",
                        policy.clone(),
                        *action,
                        outcome.as_str(),
                        e.rows[a][o] as f64,
                    ));
                }
            }
        }
        if !policy.is_empty() {
            out.push(("failures_total", policy.clone(), "", "", e.failures as f64));
            out.push(("trips_total", policy.clone(), "", "", e.trips as f64));
        }
    }
    out.push((
        "reset_timestamp_seconds",
        String::new(),
        "",
        "",
        epoch_seconds(since),
    ));
    out
}

/// A PostgreSQL timestamp (microseconds since 2000-01-01) as Unix epoch seconds.
fn epoch_seconds(t: i64) -> f64 {
    const EPOCH_2000: f64 = 946_684_800.0;
    EPOCH_2000 + t as f64 / 1_000_000.0
}

/// Series that came out with the same labels made one: a scraper refuses a scrape that has a
/// series twice. They can meet: names cut to the label's length, a policy named `''` (direct
/// calls' label) or `(other)`. Counters add up; of gauges, the highest `tripped` and the most
/// recent run (the lowest age) are kept. The order of first appearance is kept.
pub fn merge_duplicates(series: Vec<Series>) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::with_capacity(series.len());
    let mut seen: std::collections::HashMap<
        (&'static str, String, &'static str, &'static str),
        usize,
    > = std::collections::HashMap::with_capacity(series.len());
    for (metric, policy, action, outcome, value) in series {
        let key = (metric, policy, action, outcome);
        if let Some(&i) = seen.get(&key) {
            let kept = &mut out[i].4;
            *kept = match metric {
                "last_run_age_seconds" => kept.min(value),
                m if m.ends_with("_total") => *kept + value,
                _ => kept.max(value),
            };
            continue;
        }
        seen.insert(key.clone(), out.len());
        out.push((key.0, key.1, key.2, key.3, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_series_are_merged() {
        let s = |m: &'static str, p: &str, v: f64| (m, p.to_string(), "", "", v);
        let merged = merge_duplicates(vec![
            s("runs_total", "", 2.0),
            s("tripped", "a", 0.0),
            s("last_run_age_seconds", "a", 9.0),
            s("runs_total", "", 3.0),
            s("tripped", "a", 1.0),
            s("last_run_age_seconds", "a", 4.0),
            s("runs_total", "b", 1.0),
        ]);
        assert_eq!(
            merged,
            vec![
                s("runs_total", "", 5.0),
                s("tripped", "a", 1.0),
                s("last_run_age_seconds", "a", 4.0),
                s("runs_total", "b", 1.0),
            ]
        );
    }
}
