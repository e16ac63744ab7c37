//! The pipeline every SQL function runs: filter → activity snapshot → (re-check → signal →
//! wait) → report and audit.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use pgrx::pg_sys::PgTryBuilder;
use pgrx::prelude::*;

use crate::activity::{Backend, LockInfo, Snapshot};
use crate::breaker::Breaker;
use crate::compat::{self, ProcsByPid};
use crate::filter::{ChainNeeds, Filter, FilterError, MatchContext, Protected, Session};
use crate::locks::LockGraph;
use crate::report::{self, Actor, Audit, Outcome, ResultRow};
use crate::signal::{self, Delivery, Signal, Target};

/// How often the escalation's grace period re-reads pg_stat_activity.
const GRACE_POLL: Duration = Duration::from_millis(10);

/// How often it looks at the lock manager again, for a filter with lock keys: each look holds
/// every lock-manager partition for a moment, which everyone's locking waits for.
const LOCK_REFRESH: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Preview,
    /// A policy's dry run: what it would signal, recorded in reaper.log, nothing signalled.
    Report,
    Cancel,
    Terminate {
        timeout: Duration,
    },
    CancelThenTerminate {
        grace: Duration,
        timeout: Duration,
    },
}

impl Action {
    /// The name in `reaper.policies.action` and `reaper.log.action`.
    pub fn name(self) -> &'static str {
        match self {
            Action::Preview => "preview",
            Action::Report => "report",
            Action::Cancel => "cancel",
            Action::Terminate { .. } => "terminate",
            Action::CancelThenTerminate { .. } => "cancel_then_terminate",
        }
    }
}

/// A filter, validated against the running server's vocabulary. The types of the background
/// workers running now are only read when the filter names a type the static lists lack.
pub fn parse_filter(text: &str) -> Result<Filter, FilterError> {
    let parse = |vocabulary| Filter::parse_str_checked(text, &vocabulary, &mut interrupt);
    match parse(compat::server_vocabulary(false)) {
        Err(FilterError::UnknownBackendType { .. }) => parse(compat::server_vocabulary(true)),
        parsed => parsed,
    }
}

/// A cancel point for the filter's loops: a cancel or statement_timeout stops them.
pub fn interrupt() {
    pgrx::check_for_interrupts!();
}

/// Runs `action` on every backend `filter` selects, with the current role's privileges; a
/// policy's run within its `breaker`'s cap.
pub fn run(
    filter: &Filter,
    action: Action,
    actor: &Actor,
    breaker: Option<&Breaker>,
) -> Vec<ResultRow> {
    // Before anything is signalled: whatever would stop the audit stops the call now.
    let audit = if action == Action::Preview {
        None
    } else {
        Audit::prepare()
    };
    let protected = crate::guc::protected();
    let rules = Rules {
        filter,
        protected: &protected,
        breaker,
    };
    let snapshot = rules.snapshot(LockInfo::fresh(filter.chain_needs()));
    let chosen = filter.select(&snapshot.backends, &rules.context(&snapshot));
    if actor.policy.is_none() {
        if chosen.protected > 0 {
            notice!(
                "pg_reaper: {} protected session(s) matched and were left alone (pg_reaper.protected_applications, pg_reaper.protected_roles); \"include_protected\": true selects them",
                chosen.protected
            );
        }
        if let Some(graph) = &snapshot.locks {
            let gids = graph.prepared_gids();
            if !gids.is_empty() {
                notice!(
                    "pg_reaper: sessions wait for locks held by prepared transaction(s) {}, which no filter can select (they have no backend): COMMIT PREPARED or ROLLBACK PREPARED ends them",
                    gids.join(", ")
                );
            }
        }
        if chosen.hidden_in_quota > 0 {
            notice!(
                "pg_reaper: {} matching session(s) you may not see were left out of the quota and spared (\"keep\" cannot rank a session whose timestamps and address are hidden); membership in pg_read_all_stats shows them",
                chosen.hidden_in_quota
            );
        }
    }
    // From here signals go out: an error before the end (a cancel during the wait, a
    // statement_timeout) still counts those sent.
    let counting = crate::metrics::RunCount::start(actor.policy.as_deref(), action.name());
    let mut backends: Vec<Option<Backend>> = snapshot.backends.into_iter().map(Some).collect();
    let victims: Vec<Backend> = chosen
        .victims
        .into_iter()
        .filter_map(|i| backends[i].take())
        .collect();
    let rows = match action {
        Action::Preview | Action::Report => victims
            .into_iter()
            .map(|b| ResultRow::new(b, Outcome::Matched, None))
            .collect(),
        Action::Cancel => signal_all(&rules, victims, Signal::Cancel, actor),
        Action::Terminate { timeout } => terminate(&rules, victims, timeout, actor),
        Action::CancelThenTerminate { grace, timeout } => {
            cancel_then_terminate(&rules, victims, grace, timeout, actor, &counting)
        }
    };
    if let Some(audit) = &audit {
        audit.write(&rows, action.name(), actor);
    }
    match breaker {
        Some(b) if b.tripped_now() => report::tripped(b, action.name(), actor, audit.as_ref()),
        // Tripped by an earlier run: said once then; whoever runs it now is told too.
        Some(b) if b.left() > 0 => report::still_tripped(b),
        _ => {}
    }
    counting.finish(rows.iter().map(|r| r.outcome));
    report::notify(&rows, action.name(), actor);
    rows
}

/// What a call matches with: the filter, and the protected tools and roles as the call began.
struct Rules<'a> {
    filter: &'a Filter,
    protected: &'a Protected,
    /// A policy's cap on its signals.
    breaker: Option<&'a Breaker>,
}

impl Rules<'_> {
    /// A fresh snapshot, with the filter's `holding_up` keys worked out on its lock graph.
    fn snapshot(&self, lock_info: LockInfo) -> Snapshot {
        let mut snapshot = Snapshot::take(lock_info);
        if self.filter.chain_needs().is_some_and(|n| n.holding_up) {
            let ctx = self.context(&snapshot);
            if let Some(graph) = &snapshot.locks {
                self.filter
                    .mark_holding_up(&mut snapshot.backends, &ctx, graph.chains());
            }
        }
        snapshot
    }

    fn context(&self, snapshot: &Snapshot) -> MatchContext<'_> {
        MatchContext {
            // SAFETY: this backend's own pid.
            self_pid: unsafe { pg_sys::MyProcPid },
            now: snapshot.taken_at,
            protected: self.protected,
            interrupt,
        }
    }
}

/// Why a victim is no longer one when it is looked at again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    Exited,
    PidReused,
    StoppedMatching,
    /// It still matches, but its group no longer exceeds `keep` (a session of the group left).
    WithinQuota,
    /// It has become one of the protected tools or roles (its application_name changed).
    Protected,
    /// Its activity changed between every copy and its check, this many times.
    KeptChanging(u32),
}

impl Lost {
    fn describe(self) -> String {
        match self {
            Lost::Exited => "exited".into(),
            Lost::PidReused => "its pid was reused by another backend".into(),
            Lost::StoppedMatching => "no longer matched the filter".into(),
            Lost::WithinQuota => "was within its group's \"keep\" quota".into(),
            Lost::Protected => "had become a protected session (pg_reaper.protected_applications, pg_reaper.protected_roles)".into(),
            Lost::KeptChanging(n) => format!("changed what it was doing each of the {n} times it was checked"),
        }
    }
}

/// The victim as a fresh snapshot sees it (same pid, same backend_start, still a victim of the
/// filter: matching, and outside any quota), or why it is no longer a victim. (The quota is
/// judged on this snapshot; the check under the pin just before the signal re-matches the
/// row alone.)
fn recheck<'s>(
    filter: &Filter,
    ctx: &MatchContext,
    victim: &Backend,
    fresh: &HashMap<i32, &'s Backend>,
    still_victims: &HashSet<i32>,
) -> Result<&'s Backend, Lost> {
    match fresh.get(&victim.session.pid) {
        None => Err(Lost::Exited),
        Some(b) if b.started_at != victim.started_at => Err(Lost::PidReused),
        Some(b) if !filter.matches(&b.session, ctx) => Err(Lost::StoppedMatching),
        Some(b) if !still_victims.contains(&b.session.pid) => Err(Lost::WithinQuota),
        Some(b) => Ok(b),
    }
}

fn index(snapshot: &Snapshot) -> HashMap<i32, &Backend> {
    snapshot
        .backends
        .iter()
        .map(|b| (b.session.pid, b))
        .collect()
}

/// Re-checks every victim on one fresh snapshot (still there, same backend, still matching),
/// then signals each that still qualifies, its identity checked once more immediately before
/// its own signal. The `pg_reaper:` LOG lines come after the loop, even if it fails half-way,
/// with a WARNING then saying how many signals went out.
fn signal_all(
    rules: &Rules,
    victims: Vec<Backend>,
    signal: Signal,
    actor: &Actor,
) -> Vec<ResultRow> {
    if victims.is_empty() {
        return Vec::new();
    }
    signal::test_hooks::pause_before_recheck();
    let filter = rules.filter;
    let fresh = rules.snapshot(LockInfo::fresh(filter.chain_needs()));
    let ctx = rules.context(&fresh);
    let index = index(&fresh);
    let still_victims = filter.victim_pids(&fresh.backends, &ctx);
    let signalling = Signalling {
        filter,
        ctx: &ctx,
        live_locks: LiveLocks::new(filter, &fresh),
        procs: &fresh.procs,
        signal,
        telling: report::Telling::new(signal, actor, filter),
    };
    let rows = RefCell::new(Vec::with_capacity(victims.len()));
    let finished = Cell::new(false);
    let sent_before = signal::delivered_so_far();
    signal::test_hooks::pause_before_check();
    PgTryBuilder::new(AssertUnwindSafe(|| {
        for (n, victim) in victims.into_iter().enumerate() {
            let row = match recheck(filter, &ctx, &victim, &index, &still_victims) {
                // The cap reached: the victims left are not signalled and get no row.
                Ok(_) if rules.breaker.is_some_and(|b| !b.allow()) => continue,
                Ok(b) => {
                    let row = signalling.deliver(b.clone(), n == 0);
                    if let Some(breaker) = rules.breaker.filter(|_| !row.outcome.signalled()) {
                        breaker.unused();
                    }
                    row
                }
                Err(lost) => {
                    let why = format!("{} before it was signalled", lost.describe());
                    ResultRow::new(victim, Outcome::Vanished, Some(why))
                }
            };
            rows.borrow_mut().push(row);
        }
        finished.set(true);
    }))
    .finally(|| {
        signal::test_hooks::report_pin_holds();
        report::log_signals(signal, &rows.borrow(), actor);
        if !finished.get() {
            warning!(
                "pg_reaper: an error stopped the call after {} {} signal(s) had been sent; the pg_reaper: LOG lines name them",
                signal::delivered_so_far() - sent_before,
                signal.verb()
            );
        }
    })
    .execute();
    rows.into_inner()
}

/// The lock facts a victim is judged on just before its signal: from a look at the lock
/// manager taken at most [`LOCK_FACTS_MAX_AGE`] before, one look shared by all the victims
/// signalled meanwhile (a look holds every lock-manager partition for a moment).
struct LiveLocks {
    needs: Option<ChainNeeds>,
    /// The last look, until when it counts as recent, and who held up whom on it.
    look: RefCell<Option<(LockGraph, Instant, HoldingUp)>>,
    /// For `holding_up`: the sessions of the re-check (those held up are judged on them, with
    /// each new look's facts).
    sessions: Vec<Backend>,
}

/// Which of the filter's `holding_up` keys each session satisfied on a look.
type HoldingUp = HashMap<i32, u16>;

/// How old the look at the lock manager may be that a victim's lock keys are judged on.
const LOCK_FACTS_MAX_AGE: Duration = Duration::from_millis(10);

impl LiveLocks {
    /// For `filter`'s lock keys, if it has any, starting from the re-check's own look.
    fn new(filter: &Filter, recheck: &Snapshot) -> LiveLocks {
        let needs = filter.chain_needs();
        let holding_up = needs.is_some_and(|n| n.holding_up);
        let marks = |backends: &[Backend]| -> HoldingUp {
            backends
                .iter()
                .map(|b| (b.session.pid, b.session.locks.holding_up))
                .collect()
        };
        LiveLocks {
            needs,
            look: RefCell::new(recheck.locks.clone().map(|g| {
                let until = g.read_at + LOCK_FACTS_MAX_AGE;
                (g, until, marks(&recheck.backends))
            })),
            sessions: if holding_up {
                recheck.backends.clone()
            } else {
                Vec::new()
            },
        }
    }

    /// Sets `s`'s lock facts from a recent look, taking a new one if the last is too old.
    /// A look that took long to work out (a graph of thousands with counts to make) stays
    /// recent for twice what it cost, so that victims are not each charged a new one.
    fn describe(&self, s: &mut Session, filter: &Filter, ctx: &MatchContext) {
        let Some(needs) = self.needs else { return };
        let mut look = self.look.borrow_mut();
        if look
            .as_ref()
            .is_none_or(|(_, until, _)| Instant::now() > *until)
        {
            let graph = LockGraph::read(&ProcsByPid::read(), needs);
            // Who holds up whom on this look, judged on the re-check's sessions.
            let mut marks = HoldingUp::new();
            if needs.holding_up {
                let mut sessions = self.sessions.clone();
                for b in &mut sessions {
                    graph.describe(&mut b.session);
                }
                filter.mark_holding_up(&mut sessions, ctx, graph.chains());
                marks = sessions
                    .iter()
                    .map(|b| (b.session.pid, b.session.locks.holding_up))
                    .collect();
            }
            let cost = graph.read_at.elapsed();
            let until = Instant::now() + LOCK_FACTS_MAX_AGE.max(2 * cost);
            *look = Some((graph, until, marks));
        }
        if let Some((graph, _, marks)) = look.as_ref() {
            graph.describe(s);
            s.locks.holding_up = marks.get(&s.pid).copied().unwrap_or(0);
        }
    }
}

/// What signalling one victim of a call needs besides the victim.
struct Signalling<'a> {
    filter: &'a Filter,
    ctx: &'a MatchContext<'a>,
    live_locks: LiveLocks,
    procs: &'a ProcsByPid,
    signal: Signal,
    /// What the victims are told (None: nothing).
    telling: Option<report::Telling>,
}

impl Signalling<'_> {
    /// Signals one re-checked victim, judged again on its live values (and, for lock keys, a
    /// recent look at the lock manager), and says what became of it.
    fn deliver(&self, backend: Backend, first: bool) -> ResultRow {
        let Signalling {
            filter,
            ctx,
            live_locks,
            procs,
            signal,
            telling,
        } = self;
        let (filter, signal) = (*filter, *signal);
        // SAFETY: reads the clock.
        let now = unsafe { pg_sys::GetCurrentTimestamp() };
        let target = Target {
            pid: backend.session.pid,
            started_at: backend.started_at,
            slot: procs.slot(backend.session.pid),
            reason: telling.as_ref().map(|t| t.reason(&backend.session, now)),
            session: backend.session.clone(),
            hidden: backend.hidden,
        };
        let judge = |mut s: Session| {
            signal::test_hooks::assert_unpinned();
            live_locks.describe(&mut s, filter, ctx);
            // "Now" moves on with the live values: ages are measured at the signal.
            let now = MatchContext {
                // SAFETY: reads the clock.
                now: unsafe { pg_sys::GetCurrentTimestamp() },
                ..**ctx
            };
            filter.verdict(&s, &now)
        };
        let vanished = |lost: Lost| Some(format!("{} before it was signalled", lost.describe()));
        let (outcome, detail) =
        match signal::send(&target, signal, first, filter.reads_query(), &judge) {
        Delivery::Delivered if signal == Signal::Cancel => (Outcome::Cancelled, None),
        Delivery::Delivered => (Outcome::Signalled, None),
        Delivery::Exited => (Outcome::Vanished, vanished(Lost::Exited)),
        Delivery::PidReused => (Outcome::Vanished, vanished(Lost::PidReused)),
        Delivery::StoppedMatching => (Outcome::Vanished, vanished(Lost::StoppedMatching)),
        Delivery::Protected => (Outcome::Vanished, vanished(Lost::Protected)),
        Delivery::KeptChanging(n) => (Outcome::Vanished, vanished(Lost::KeptChanging(n))),
        Delivery::Denied(why) => (Outcome::Denied, Some(why)),
        Delivery::NotABackend => (
            Outcome::Failed,
            Some(format!(
                "PID {} is not a PostgreSQL backend process: pg_cancel_backend and pg_terminate_backend cannot signal it",
                target.pid
            )),
        ),
        Delivery::Failed(why) => (Outcome::Failed, Some(why)),
    };
        ResultRow::new(backend, outcome, detail)
    }
}

/// Signals all victims, then confirms their exit against one deadline.
fn terminate(
    rules: &Rules,
    victims: Vec<Backend>,
    timeout: Duration,
    actor: &Actor,
) -> Vec<ResultRow> {
    let mut rows = signal_all(rules, victims, Signal::Terminate, actor);
    if timeout.is_zero() {
        return rows;
    }
    let waiting: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].outcome == Outcome::Signalled)
        .collect();
    let pids: Vec<i32> = waiting
        .iter()
        .map(|&i| rows[i].backend.session.pid)
        .collect();
    let gone_after = signal::wait_for_exit(&pids, Instant::now(), timeout);
    for (&i, gone) in waiting.iter().zip(gone_after) {
        let row = &mut rows[i];
        match gone {
            Some(after) => {
                row.outcome = Outcome::Terminated;
                row.waited_ms = after.as_millis() as i64;
            }
            None => {
                row.outcome = Outcome::TimedOut;
                row.waited_ms = timeout.as_millis() as i64;
                row.detail = Some(format!(
                    "still running {} ms after the signal",
                    row.waited_ms
                ));
            }
        }
    }
    rows
}

/// Ask nicely, then insist: cancel every victim, give them up to `grace` to stop matching
/// (watching them all against one deadline), and terminate those that still match.
fn cancel_then_terminate(
    rules: &Rules,
    victims: Vec<Backend>,
    grace: Duration,
    timeout: Duration,
    actor: &Actor,
    counting: &crate::metrics::RunCount,
) -> Vec<ResultRow> {
    let filter = rules.filter;
    let mut rows = signal_all(rules, victims, Signal::Cancel, actor);
    // The terminates go only to sessions cancelled now: no more sessions get a signal.
    counting.no_more_sessions();
    let mut watching: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].outcome == Outcome::Cancelled)
        .collect();
    if watching.is_empty() {
        return rows;
    }
    let started = Instant::now();
    // The lock graph is looked at afresh at most every LOCK_REFRESH meanwhile.
    let mut graph: Option<LockGraph> = None;
    let still_matching = loop {
        let lock_info = match (&graph, filter.chain_needs()) {
            (_, None) => LockInfo::Skip,
            (Some(g), Some(_)) if g.read_at.elapsed() < LOCK_REFRESH => LockInfo::Reuse(g),
            (_, Some(needs)) => LockInfo::Read(needs),
        };
        let reread = matches!(lock_info, LockInfo::Read(_));
        let fresh = rules.snapshot(lock_info);
        if reread {
            graph = fresh.locks.clone();
        }
        let ctx = rules.context(&fresh);
        let index = index(&fresh);
        let still_victims = filter.victim_pids(&fresh.backends, &ctx);
        let mut still = Vec::new();
        for i in watching {
            match recheck(filter, &ctx, &rows[i].backend, &index, &still_victims) {
                Ok(b) => still.push((i, b.clone())),
                // The cancel did its job: the session lives, and is left alone.
                Err(Lost::StoppedMatching) => {
                    rows[i].detail = Some("stopped matching after the cancel".into());
                }
                Err(Lost::WithinQuota) => {
                    rows[i].detail =
                        Some("was within its group's \"keep\" quota after the cancel".into());
                }
                Err(lost) => {
                    rows[i].outcome = Outcome::Vanished;
                    rows[i].detail = Some(format!("{} after the cancel", lost.describe()));
                }
            }
        }
        let elapsed = started.elapsed();
        if still.is_empty() || elapsed >= grace {
            break still;
        }
        watching = still.iter().map(|(i, _)| *i).collect();
        signal::sleep_interruptibly(GRACE_POLL.min(grace - elapsed));
    };
    let grace_ms = started.elapsed().as_millis() as i64;
    let (indexes, backends): (Vec<usize>, Vec<Backend>) = still_matching.into_iter().unzip();
    let by_pid: HashMap<i32, usize> = indexes
        .iter()
        .map(|&i| (rows[i].backend.session.pid, i))
        .collect();
    let mut terminated = HashSet::new();
    for row in terminate(rules, backends, timeout, actor) {
        let i = by_pid[&row.backend.session.pid];
        terminated.insert(i);
        // waited_ms counts the grace period too: the whole time the victim was given.
        rows[i] = ResultRow {
            waited_ms: row.waited_ms + grace_ms,
            ..row
        };
    }
    // Those the circuit breaker left: cancelled, still matching, not terminated.
    for i in indexes.into_iter().filter(|i| !terminated.contains(i)) {
        rows[i].detail = Some(
            "still matched after the cancel; not terminated: the policy's max_signals_per_minute was reached".into(),
        );
    }
    rows
}
