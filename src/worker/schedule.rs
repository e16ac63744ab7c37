//! The worker's schedule: the scheduled policies as last read, each with its validated filter
//! (parsed and its regexes compiled once per change of the policy, not per run), when it runs
//! next, and what its last run did; published to shared memory after every cycle.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pgrx::prelude::*;

use super::status::{PolicySlot, State, MAX_POLICIES, STATUS};
use super::{in_transaction, WORKER_TYPE};
use crate::policy::{self, Policy, Prepared, Which};
use crate::report::{Actor, Outcome};
use crate::signal::in_subtransaction;

/// One scheduled policy.
struct Entry {
    policy: Policy,
    /// The filter and action, validated; None until the first run after a change, or when the
    /// policy is invalid (then `error` says why).
    prepared: Option<Prepared>,
    next_run: Instant,
    slot: PolicySlot,
}

#[derive(Default)]
pub struct Schedule {
    entries: BTreeMap<String, Entry>,
    /// The last thing said in the server log about waiting, so that it is said once.
    said: Option<String>,
}

impl Schedule {
    /// Reads the policies, runs those that are due, each in a transaction of its own (an error
    /// in one, even a panic, costs that run only), publishes the status. Returns when the next
    /// one is due.
    pub fn cycle(&mut self, database: &str) -> Instant {
        let now = Instant::now();
        let standby = match in_transaction("reading the policies", || self.read(database, now)) {
            Ok(Some(standby)) => standby,
            Ok(None) | Err(_) => {
                self.publish();
                return now + super::CYCLE;
            }
        };
        let mut wake = now + super::CYCLE;
        for entry in self.entries.values_mut() {
            entry.slot.runs_here = entry.policy.run_on.here(standby);
            if !entry.slot.runs_here {
                entry.slot.next_run_at = 0;
                continue;
            }
            if entry.next_run <= Instant::now() {
                let started = Instant::now();
                let what = format!("policy \"{}\"", entry.policy.name);
                if let Err(message) = in_transaction(&what, || entry.run()) {
                    entry.finish(started, Err(message), &[]);
                }
            }
            wake = wake.min(entry.next_run);
            entry.slot.next_run_at =
                timestamp_in(entry.next_run.saturating_duration_since(Instant::now()));
        }
        self.publish();
        wake
    }

    /// pg_reaper.worker = off: nothing runs; the status says so.
    pub fn park(&mut self) {
        let mut s = STATUS.exclusive();
        s.state = State::Off;
        s.message.set("pg_reaper.worker is off");
        self.said = None;
    }

    /// Checks the extension and reads the scheduled policies. Some(whether this node is a
    /// standby) when the worker can run them; None while it waits for the extension.
    fn read(&mut self, database: &str, now: Instant) -> Option<bool> {
        if let Err(waiting) = extension_ready(database) {
            self.say(&waiting);
            let mut s = STATUS.exclusive();
            s.state = State::WaitingForExtension;
            s.message.set(&waiting);
            self.entries.clear();
            return None;
        }
        if self.said.take().is_some() {
            log!("pg_reaper worker: enforcing the scheduled policies of database \"{database}\"");
        }
        {
            let mut s = STATUS.exclusive();
            s.state = State::Running;
            s.message.set("");
            s.cycles += 1;
        }
        self.sync(policy::load(Which::Scheduled), now);
        // SAFETY: reads shared state set by the startup process.
        Some(unsafe { pg_sys::RecoveryInProgress() })
    }

    /// Follows the table: new policies run at once, changed ones are validated again, deleted
    /// or disabled ones go.
    fn sync(&mut self, policies: Vec<Policy>, now: Instant) {
        let mut kept = BTreeMap::new();
        for policy in policies {
            let entry = match self.entries.remove(&policy.name) {
                Some(mut entry) => {
                    if entry.policy != policy {
                        entry.prepared = None;
                        entry.slot.last_error.set("");
                        if entry.policy.run_every != policy.run_every {
                            entry.next_run = now;
                        }
                        entry.policy = policy;
                    }
                    entry
                }
                None => {
                    let mut slot = PolicySlot::EMPTY;
                    slot.name.set(&policy.name);
                    Entry {
                        policy,
                        prepared: None,
                        next_run: now,
                        slot,
                    }
                }
            };
            kept.insert(entry.policy.name.clone(), entry);
        }
        self.entries = kept;
    }

    fn publish(&self) {
        let mut s = STATUS.exclusive();
        let mut n = 0;
        for entry in self.entries.values().take(MAX_POLICIES) {
            let mut slot = entry.slot;
            slot.run_on = entry.policy.run_on;
            slot.run_every_us = entry.policy.run_every.map_or(0, |d| d.as_micros() as i64);
            s.policies[n] = slot;
            n += 1;
        }
        s.policy_count = n;
    }

    /// Says `message` in the server log, unless it was the last thing said.
    fn say(&mut self, message: &str) {
        if self.said.as_deref() != Some(message) {
            log!("pg_reaper worker: {message}");
            self.said = Some(message.to_string());
        }
    }
}

impl Entry {
    /// One run, as run_policy would run it, with the worker as the caller. A failure is a
    /// WARNING and a `failed` row the first time it happens; while the same failure repeats,
    /// only `last_error` shows it (a policy run every 100 ms must not flood the log).
    fn run(&mut self) {
        let started = Instant::now();
        // SAFETY: reads the clock.
        self.slot.last_run_at = unsafe { pg_sys::GetCurrentTimestamp() };
        report_running(&self.policy.name);
        let previous_error = self.slot.last_error.get();
        let quiet = (!previous_error.is_empty()).then_some(previous_error.as_str());
        if self.prepared.is_none() {
            match in_subtransaction(|| policy::prepare(&self.policy)) {
                Ok(p) => self.prepared = Some(p),
                Err(e) => {
                    let message = crate::report::message(&e);
                    if quiet != Some(message.as_str()) {
                        warning!(
                            "pg_reaper: policy \"{}\" failed (it signalled nothing): {message}",
                            self.policy.name
                        );
                    }
                    crate::report::rethrow_if_fatal_to_the_call(e);
                    self.finish(started, Err(message), &[]);
                    return;
                }
            }
        }
        let actor = Actor::worker(self.policy.owner, &self.policy.name);
        let result =
            policy::run_guarded_quietly(&self.policy, &actor, self.prepared.as_ref(), quiet);
        match result {
            Ok(rows) => {
                let outcomes: Vec<Outcome> = rows.iter().map(|r| r.outcome).collect();
                self.finish(started, Ok(()), &outcomes);
            }
            Err(message) => self.finish(started, Err(message), &[]),
        }
    }

    fn finish(&mut self, started: Instant, result: Result<(), String>, outcomes: &[Outcome]) {
        let every = self.policy.run_every.unwrap_or(super::CYCLE);
        self.next_run = started + every;
        self.slot.runs += 1;
        self.slot.last_duration_us = started.elapsed().as_micros() as i64;
        self.slot.last_outcomes = [0; Outcome::ALL.len()];
        for o in outcomes {
            let i = Outcome::ALL.iter().position(|x| x == o).unwrap_or(0);
            self.slot.last_outcomes[i] += 1;
            if o.signalled() {
                self.slot.signalled += 1;
            }
        }
        match result {
            Ok(()) => self.slot.last_error.set(""),
            Err(message) => self.slot.last_error.set(&message),
        }
    }
}

/// Whether the extension is there, at the library's version, in this database; if not, what
/// the worker waits for.
fn extension_ready(database: &str) -> Result<(), String> {
    // A read-only query through a read-only client: pgrx's Spi::get_one would assign a
    // transaction id, which a hot standby refuses (and a primary need not spend).
    let version: Option<String> = Spi::connect(|client| {
        client
            .select(
                "SELECT e.extversion FROM pg_catalog.pg_extension e \
                  WHERE e.extname OPERATOR(pg_catalog.=) 'pg_reaper'",
                Some(1),
                &[],
            )?
            .first()
            .get_one()
    })
    .ok()
    .flatten();
    let library = env!("CARGO_PKG_VERSION");
    match version {
        None => Err(format!(
            "extension pg_reaper is not installed in database \"{database}\"; the worker waits for CREATE EXTENSION pg_reaper"
        )),
        Some(v) if v != library => Err(format!(
            "extension pg_reaper in database \"{database}\" is version {v}, the library {library}; the worker waits for ALTER EXTENSION pg_reaper UPDATE"
        )),
        Some(_) => Ok(()),
    }
}

/// While it runs a policy, pg_stat_activity shows the worker active with the policy's name.
fn report_running(policy: &str) {
    let text = std::ffi::CString::new(format!("{WORKER_TYPE}: running policy {policy}"))
        .unwrap_or_default();
    // SAFETY: reports this process's own activity.
    unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, text.as_ptr()) };
}

/// The PostgreSQL timestamp `after` from now.
fn timestamp_in(after: Duration) -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() + after.as_micros() as i64 }
}
