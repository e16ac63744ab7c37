//! What the worker knows, in shared memory, so that `reaper.worker()` and
//! `reaper.worker_status()` answer from any session, on a primary or a hot standby alike (a
//! standby could not read it from a table the worker wrote). The worker writes it; sessions read
//! it, both under one lightweight lock. Plain fixed-size data only: no pointer survives here.

use pgrx::lwlock::PgLwLock;
use pgrx::shmem::PGRXSharedMemory;

use crate::policy::RunOn;
use crate::report::Outcome;

/// Policies the status keeps (the worker runs more; only the first this many, by name, show).
pub const MAX_POLICIES: usize = 256;

/// A string of at most N bytes, cut at a character boundary.
#[derive(Clone, Copy)]
pub struct Text<const N: usize> {
    len: usize,
    bytes: [u8; N],
}

impl<const N: usize> Text<N> {
    pub const EMPTY: Text<N> = Text {
        len: 0,
        bytes: [0; N],
    };

    pub fn set(&mut self, s: &str) {
        let mut end = s.len().min(N);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.bytes[..end].copy_from_slice(&s.as_bytes()[..end]);
        self.len = end;
    }

    pub fn get(&self) -> String {
        String::from_utf8_lossy(&self.bytes[..self.len.min(N)]).into_owned()
    }

    /// The bytes kept (no allocation: for comparisons under a lock).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len.min(N)]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One scheduled policy, as the worker last ran it.
#[derive(Clone, Copy)]
pub struct PolicySlot {
    pub name: Text<256>,
    pub run_on: RunOn,
    /// Whether `run_on` lets it run on this node now.
    pub runs_here: bool,
    pub run_every_us: i64,
    /// PostgreSQL timestamps (microseconds since 2000); 0: never / not scheduled here.
    pub last_run_at: i64,
    pub next_run_at: i64,
    pub last_duration_us: i64,
    pub runs: u64,
    pub signalled: u64,
    /// The last run's result rows by outcome, in `Outcome::ALL` order.
    pub last_outcomes: [u32; Outcome::ALL.len()],
    pub last_error: Text<256>,
    /// Its circuit breaker as of the last run (None: not capped).
    pub breaker: Option<crate::breaker::Handle>,
}

impl PolicySlot {
    pub const EMPTY: PolicySlot = PolicySlot {
        name: Text::EMPTY,
        run_on: RunOn::Any,
        runs_here: false,
        run_every_us: 0,
        last_run_at: 0,
        next_run_at: 0,
        last_duration_us: 0,
        runs: 0,
        signalled: 0,
        last_outcomes: [0; Outcome::ALL.len()],
        last_error: Text::EMPTY,
        breaker: None,
    };
}

/// What the worker is doing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    NotStarted,
    Starting,
    WaitingForDatabase,
    WaitingForExtension,
    Off,
    Running,
    /// Exited; the postmaster starts it again a second later.
    Restarting,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::NotStarted => "not started",
            State::Starting => "starting",
            State::WaitingForDatabase => "waiting for its database",
            State::WaitingForExtension => "waiting for the extension",
            State::Off => "off",
            State::Running => "running",
            State::Restarting => "restarting",
        }
    }
}

pub struct WorkerStatus {
    pub pid: i32,
    pub state: State,
    pub started_at: i64,
    pub database: Text<64>,
    /// What it last had to say (why it waits, its last error), for `reaper.worker()`.
    pub message: Text<256>,
    pub cycles: u64,
    /// Set just before connecting to the database, cleared once connected: a worker that
    /// finds it set was restarted after a failed connection (a missing database, most likely).
    pub connecting: bool,
    pub policy_count: usize,
    pub policies: [PolicySlot; MAX_POLICIES],
}

impl WorkerStatus {
    pub const fn new() -> WorkerStatus {
        WorkerStatus {
            pid: 0,
            state: State::NotStarted,
            started_at: 0,
            database: Text::EMPTY,
            message: Text::EMPTY,
            cycles: 0,
            connecting: false,
            policy_count: 0,
            policies: [PolicySlot::EMPTY; MAX_POLICIES],
        }
    }
}

impl Default for WorkerStatus {
    fn default() -> WorkerStatus {
        WorkerStatus::new()
    }
}

// SAFETY: fixed-size plain data (integers, bytes, field-less enums); no pointer into
// process-local memory.
unsafe impl PGRXSharedMemory for WorkerStatus {}

// SAFETY: the name is unique to pg_reaper; the lock and the struct are set up by pg_shmem_init!
// in _PG_init when the library is preloaded.
pub static STATUS: PgLwLock<WorkerStatus> = unsafe { PgLwLock::new(c"pg_reaper_worker_status") };

/// `reaper.worker_status()`'s rows.
#[allow(clippy::type_complexity)]
pub fn policy_rows() -> Vec<(
    String,
    String,
    Option<pgrx::datum::Interval>,
    Option<pgrx::datum::TimestampWithTimeZone>,
    Option<f64>,
    i64,
    i64,
    pgrx::JsonB,
    Option<String>,
    Option<pgrx::datum::TimestampWithTimeZone>,
    Option<pgrx::datum::TimestampWithTimeZone>,
)> {
    if !crate::guc::preloaded() {
        return Vec::new();
    }
    // Copied out first: the breakers' lock is not taken under the status's.
    let policies: Vec<PolicySlot> = {
        let s = STATUS.share();
        s.policies[..s.policy_count].to_vec()
    };
    policies
        .iter()
        .map(|p| {
            let outcomes: serde_json::Map<String, serde_json::Value> = Outcome::ALL
                .iter()
                .zip(p.last_outcomes)
                .filter(|(_, n)| *n > 0)
                .map(|(o, n)| (o.as_str().to_string(), n.into()))
                .collect();
            let ran = p.last_run_at != 0;
            (
                p.name.get(),
                p.run_on.name().to_string(),
                (p.run_every_us > 0).then(|| pgrx::datum::Interval::from_micros(p.run_every_us)),
                ran.then(|| timestamp(p.last_run_at)).flatten(),
                ran.then(|| p.last_duration_us as f64 / 1000.0),
                p.runs as i64,
                p.signalled as i64,
                pgrx::JsonB(serde_json::Value::Object(outcomes)),
                (!p.last_error.is_empty()).then(|| p.last_error.get()),
                (p.runs_here && p.next_run_at != 0)
                    .then(|| timestamp(p.next_run_at))
                    .flatten(),
                p.breaker
                    .and_then(|b| b.tripped_until())
                    .and_then(timestamp),
            )
        })
        .collect()
}

/// `reaper.worker()`'s row.
#[allow(clippy::type_complexity)]
pub fn worker_row() -> (
    Option<i32>,
    String,
    Option<String>,
    Option<pgrx::datum::TimestampWithTimeZone>,
    i64,
    Option<String>,
) {
    if !crate::guc::preloaded() {
        return (
            None,
            "not loaded".into(),
            None,
            None,
            0,
            Some(
                "pg_reaper is not in shared_preload_libraries: no worker runs; reaper.run_policies() runs the policies"
                    .into(),
            ),
        );
    }
    let s = STATUS.share();
    (
        (s.pid != 0).then_some(s.pid),
        s.state.name().to_string(),
        (!s.database.is_empty()).then(|| s.database.get()),
        timestamp(s.started_at),
        s.cycles as i64,
        (!s.message.is_empty()).then(|| s.message.get()),
    )
}

fn timestamp(t: i64) -> Option<pgrx::datum::TimestampWithTimeZone> {
    (t != 0)
        .then(|| pgrx::datum::TimestampWithTimeZone::try_from(t).ok())
        .flatten()
}

/// The worker's gauges for `reaper.metrics()`: `worker_up` (its process runs), and for each
/// scheduled policy that runs on this node `last_run_age_seconds` (once it ran) and `tripped`
/// (1 while its circuit breaker holds it, for capped policies). Copied out under the lock,
/// worked out after.
pub fn gauge_series(now: i64) -> Vec<crate::metrics::Series> {
    if !crate::guc::preloaded() {
        return vec![("worker_up", String::new(), "", "", 0.0)];
    }
    let (up, policies) = {
        let s = STATUS.share();
        let up = s.pid != 0 && !matches!(s.state, State::Restarting | State::NotStarted);
        (up, s.policies[..s.policy_count].to_vec())
    };
    let mut out = vec![("worker_up", String::new(), "", "", f64::from(u8::from(up)))];
    for p in policies.iter().filter(|p| p.runs_here) {
        let name = p.name.get();
        if p.last_run_at != 0 {
            let age = (now - p.last_run_at).max(0) as f64 / 1_000_000.0;
            out.push(("last_run_age_seconds", name.clone(), "", "", age));
        }
        if let Some(b) = p.breaker {
            let tripped = b.tripped_until().is_some();
            out.push(("tripped", name, "", "", f64::from(u8::from(tripped))));
        }
    }
    out
}
