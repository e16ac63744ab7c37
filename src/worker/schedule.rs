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

/// What the worker keeps of all its policies' regexes (each filter's within its own budget of
/// 16 MiB; the worker keeps every scheduled policy's compiled between runs).
pub const WORKER_REGEX_BUDGET_BYTES: usize = 256 << 20;

/// One scheduled policy.
struct Entry {
    policy: Policy,
    /// The filter and action, validated; None until the first run after a change, or when the
    /// policy is invalid (then `last_error` says why).
    prepared: Option<Prepared>,
    next_run: Instant,
    /// The last run's error, whole (the status keeps a clipped copy): while the same failure
    /// repeats, it is not reported again.
    last_error: Option<String>,
    slot: PolicySlot,
}

#[derive(Default)]
pub struct Schedule {
    entries: BTreeMap<String, Entry>,
    /// When the table was last read: a run never uses a row read more than a cycle ago.
    read_at: Option<Instant>,
    /// The last thing said in the server log about waiting, so that it is said once.
    said: Option<String>,
}

/// Why the policies could not be read.
enum Unread {
    /// The extension is not there (yet): nothing to run.
    Waiting,
    /// The read failed (a lock held on `reaper.policies`, most likely): the policies as last
    /// read go on running, so that the session holding that lock cannot stop the very policy
    /// that would end it.
    Failed,
}

impl Schedule {
    /// Runs the policies that are due, in name order, each in a transaction of its own (an
    /// error in one, even a panic, costs that run only), re-reading the table whenever the
    /// last read is a cycle old; publishes the status. Returns when the next one is due.
    pub fn cycle(&mut self, database: &str) -> Instant {
        let mut ran: Vec<String> = Vec::new();
        loop {
            let stale = self.read_at.is_none_or(|at| at.elapsed() >= super::CYCLE);
            if stale {
                match self.refresh(database) {
                    Ok(()) => {}
                    Err(Unread::Waiting) => {
                        self.publish();
                        return Instant::now() + super::CYCLE;
                    }
                    Err(Unread::Failed) => {
                        // Retried next time round, at the earliest in a cycle.
                        self.read_at = Some(Instant::now());
                    }
                }
            }
            let now = Instant::now();
            let due = self
                .entries
                .iter()
                .find(|(name, e)| e.next_run <= now && !ran.contains(name))
                .map(|(name, _)| name.clone());
            let Some(name) = due else { break };
            ran.push(name.clone());
            // What the other policies' kept filters take, against the worker's budget.
            let others: usize = self
                .entries
                .iter()
                .filter(|(n, _)| **n != name)
                .filter_map(|(_, e)| e.prepared.as_ref())
                .map(|p| p.filter.regex_bytes)
                .sum();
            let entry = self.entries.get_mut(&name).expect("a listed policy");
            let started = Instant::now();
            let runs_before = entry.slot.runs;
            let what = format!("policy \"{name}\"");
            if let Err(message) = in_transaction(&what, || entry.run(others)) {
                if entry.slot.runs == runs_before {
                    entry.finish(started, Err(message), &[]);
                } else {
                    // The run was done and counted; its transaction failed to commit.
                    entry.last_error = Some(message.clone());
                    entry.slot.last_error.set(&message);
                }
            }
        }
        let mut wake = Instant::now() + super::CYCLE;
        for entry in self.entries.values_mut() {
            if entry.slot.runs_here {
                wake = wake.min(entry.next_run);
                entry.slot.next_run_at =
                    timestamp_in(entry.next_run.saturating_duration_since(Instant::now()));
            } else {
                entry.slot.next_run_at = 0;
            }
        }
        self.publish();
        wake
    }

    /// pg_reaper.worker = off: nothing runs; the status says so and lists no policy.
    pub fn park(&mut self) {
        let mut s = STATUS.exclusive();
        s.state = State::Off;
        s.message.set("pg_reaper.worker is off");
        s.policy_count = 0;
        self.said = None;
        self.read_at = None;
    }

    /// Reads the table again, in a transaction of its own.
    fn refresh(&mut self, database: &str) -> Result<(), Unread> {
        let now = Instant::now();
        match in_transaction("reading the policies", || self.read(database, now)) {
            Ok(true) => {
                self.read_at = Some(now);
                Ok(())
            }
            Ok(false) => Err(Unread::Waiting),
            Err(_) if self.entries.is_empty() => Err(Unread::Waiting),
            Err(_) => Err(Unread::Failed),
        }
    }

    /// Checks the extension and reads the scheduled policies; false while it waits for the
    /// extension.
    fn read(&mut self, database: &str, now: Instant) -> bool {
        if let Err(waiting) = extension_ready(database) {
            self.say(&waiting);
            let mut s = STATUS.exclusive();
            s.state = State::WaitingForExtension;
            s.message.set(&waiting);
            self.entries.clear();
            return false;
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
        self.sync(policy::load_current(Which::Scheduled), now);
        true
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
                        entry.last_error = None;
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
                    slot.runs_here = true;
                    Entry {
                        policy,
                        prepared: None,
                        next_run: now,
                        last_error: None,
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
    /// `others`: what the other policies' kept filters count for against
    /// [`WORKER_REGEX_BUDGET_BYTES`].
    fn run(&mut self, others: usize) {
        // Where this runs is decided in the run's own transaction: a standby promoted since
        // the last run is a primary now.
        // SAFETY: reads shared state set by the startup process, and this transaction's own.
        let (standby, began_in_recovery) = unsafe {
            (
                pg_sys::RecoveryInProgress(),
                pg_sys::TransactionStartedDuringRecovery(),
            )
        };
        self.slot.runs_here = self.policy.run_on.here(standby);
        if !self.slot.runs_here {
            self.next_run = Instant::now() + super::CYCLE;
            return;
        }
        if began_in_recovery && !standby {
            // Promoted a moment ago: this transaction is still read-only, and could not write
            // the audit rows. The next cycle runs it in one that can.
            return;
        }
        let started = Instant::now();
        // SAFETY: reads the clock.
        self.slot.last_run_at = unsafe { pg_sys::GetCurrentTimestamp() };
        report_running(&self.policy.name);
        let quiet = self.last_error.clone();
        let actor = Actor::worker(self.policy.owner, &self.policy.name);
        if self.prepared.is_none() {
            let prepared = in_subtransaction(|| {
                let p = policy::prepare(&self.policy);
                if others + p.filter.regex_bytes > WORKER_REGEX_BUDGET_BYTES {
                    crate::error::refuse(&format!(
                        "the regexes of the scheduled policies would take more than the worker's budget of {} MiB together; this policy's take {} kB",
                        WORKER_REGEX_BUDGET_BYTES >> 20,
                        p.filter.regex_bytes >> 10
                    ));
                }
                p
            });
            match prepared {
                Ok(p) => self.prepared = Some(p),
                Err(e) => {
                    let message = crate::report::message(&e);
                    if quiet.as_deref() != Some(message.as_str()) {
                        let fatal = crate::report::is_fatal_to_the_call(&e);
                        policy::report_failure(&self.policy, &actor, &e, 0, !fatal);
                    }
                    crate::report::rethrow_if_fatal_to_the_call(e);
                    self.finish(started, Err(message), &[]);
                    return;
                }
            }
        }
        let result = policy::run_guarded_quietly(
            &self.policy,
            &actor,
            self.prepared.as_ref(),
            quiet.as_deref(),
        );
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
        self.next_run = started.checked_add(every).unwrap_or(started + super::CYCLE);
        self.slot.runs += 1;
        self.slot.breaker = self.policy.breaker().map(|b| b.handle());
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
            Ok(()) => {
                self.last_error = None;
                self.slot.last_error.set("");
            }
            Err(message) => {
                self.slot.last_error.set(&message);
                self.last_error = Some(message);
            }
        }
    }
}

/// Whether the extension is there, at the library's version, in this database; if not, what
/// the worker waits for.
fn extension_ready(database: &str) -> Result<(), String> {
    let version = policy::installed_version();
    let library = crate::guc::LIBRARY_VERSION;
    match version {
        None => Err(format!(
            "extension pg_reaper is not installed in database \"{database}\"; the worker waits for CREATE EXTENSION pg_reaper"
        )),
        Some(v) if v == library => Ok(()),
        // The SQL was updated past the library this server loaded at start: only a restart
        // loads the new one.
        Some(v) if policy::parse_version(&v) > policy::parse_version(library) => Err(format!(
            "extension pg_reaper in database \"{database}\" is version {v}, newer than the library {library} this server loaded at start; the worker waits for a server restart, which loads the new library"
        )),
        Some(v) => Err(format!(
            "extension pg_reaper in database \"{database}\" is version {v}, the library {library}; the worker waits for ALTER EXTENSION pg_reaper UPDATE"
        )),
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
    let after = i64::try_from(after.as_micros()).unwrap_or(i64::MAX);
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }.saturating_add(after)
}
