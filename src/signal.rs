//! Signal and wait. The signal itself is PostgreSQL's own `pg_cancel_backend` /
//! `pg_terminate_backend`, called directly (no catalog lookup, so no search_path can redirect
//! it) inside a subtransaction, so that its permission error becomes a `denied` row instead of
//! aborting the set. Whatever PostgreSQL would allow or forbid, we allow or forbid.
//!
//! Immediately before each signal, the victim's identity is checked again (its PGPROC is in
//! the proc array, and its live status entry has the pid and start time that matched), and from
//! that check to the signal the victim is pinned: ProcArrayLock is held in shared mode, so it
//! cannot leave the proc array, so it cannot exit, so its pid cannot be handed to anyone else.
//! PostgreSQL's own pg_terminate_backend leaves that window open.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use pgrx::direct_function_call;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::pg_sys::PgTryBuilder;
use pgrx::prelude::*;

use crate::compat::{self, LiveActivity, LiveState, ProcArrayPin};
use crate::filter::{Session, Verdict};
use crate::reasons;

/// How often the wait re-checks its pending backends.
const POLL: Duration = Duration::from_millis(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Cancel,
    Terminate,
}

impl Signal {
    pub fn verb(self) -> &'static str {
        match self {
            Signal::Cancel => "cancel",
            Signal::Terminate => "terminate",
        }
    }
}

/// The process a signal is meant for, as the re-check saw it: its pid, start time, and the
/// row the filter matched (to match again on live values just before the signal).
#[derive(Debug, Clone)]
pub struct Target {
    pub pid: i32,
    pub started_at: Option<i64>,
    /// Its PGPROC slot as the re-check found it (the copy looks there first, rather than
    /// searching the proc array with the lock held).
    pub slot: Option<*mut pg_sys::PGPROC>,
    pub session: Session,
    /// The caller may not see the session's activity: nothing of it is re-read.
    pub hidden: bool,
    /// What the victim is told, if anything (`pg_reaper.tell_victims`).
    pub reason: Option<Vec<u8>>,
}

/// What became of one signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// Not signalled: the process is gone (or on its way out).
    Exited,
    /// Not signalled: the pid now belongs to another process.
    PidReused,
    /// Not signalled: on its live values, just before the signal, it no longer matched.
    StoppedMatching,
    /// Not signalled: on its live values it has become a protected tool or role.
    Protected,
    /// Not signalled: its activity changed between every copy and its check, this many times.
    KeptChanging(u32),
    /// Not signalled: an auxiliary process (checkpointer, walwriter, ...), which PostgreSQL's
    /// signal functions refuse to signal.
    NotABackend,
    /// PostgreSQL refused; its message.
    Denied(String),
    /// Not delivered; why.
    Failed(String),
}

thread_local! {
    /// Signals delivered by this backend since it started: whoever must say how many signals
    /// went out before an error compares two readings.
    static DELIVERED: Cell<u64> = const { Cell::new(0) };
}

/// How many signals this backend has delivered so far.
pub fn delivered_so_far() -> u64 {
    DELIVERED.with(Cell::get)
}

/// Sends `signal` to `target` with the current role's privileges, if it is still the process
/// that matched and, on its live values, still a victim (`judge`, which gets the session as it
/// is now). `first` marks the first victim of a call (for the test-only pause).
///
/// The live values are copied under the pin, judged outside it (what a filter costs to match
/// is its writer's to choose, and nobody may connect, exit or commit while the pin is held),
/// then the pin is taken again and the victim signalled only if nothing it showed has changed
/// since the copy: its status entry's change count (every write to the entry moves it, an exit
/// too), its wait event and its role.
pub fn send(
    target: &Target,
    signal: Signal,
    first: bool,
    reads_query: bool,
    judge: &dyn Fn(Session) -> Verdict,
) -> Delivery {
    // A status entry stays odd (being written) for a few instructions; a writer stopped in the
    // middle would keep it so. Give it about 100 ms, without holding the pin while waiting.
    const BUSY_TRIES: u32 = 100;
    // A victim that changes between every copy and its check is judged again, this often.
    const CHANGED_TRIES: u32 = 20;
    let (mut busy, mut changed) = (0, 0);
    let mut warmed = None;
    let superuser = compat::is_superuser();
    // Room for the copies, made before any pin; the query text only where it is judged.
    let mut live = LiveActivity::with_room(!target.hidden && reads_query);
    loop {
        let seen = {
            let pin = ProcArrayPin::acquire();
            look(&pin, target, &mut live)
        };
        let proc = match seen {
            Look::Done(delivery) => return delivery,
            Look::Busy if busy < BUSY_TRIES => {
                busy += 1;
                sleep_interruptibly(Duration::from_millis(1));
                continue;
            }
            Look::Busy => {
                return Delivery::Failed(
                    "its status entry was being rewritten for 100 ms; not signalled".into(),
                )
            }
            Look::Live(proc) => proc,
        };
        // A session the caller may not see is judged on what the caller sees of it: its
        // application_name, besides its identity (and its lock facts).
        let mut now = target.session.clone();
        if target.hidden {
            now.application_name = Some(String::from_utf8_lossy(&live.application_name).into());
        } else {
            update_activity(&mut now, &live, reads_query);
        }
        match judge(now) {
            Verdict::Yes => {}
            Verdict::No => return Delivery::StoppedMatching,
            Verdict::Protected => return Delivery::Protected,
        }
        // The role checks under the pin must hit the caches for the victim's live role.
        if warmed != Some(live.role) {
            compat::prewarm_signal_permissions(live.role);
            warmed = Some(live.role);
        }
        // A superuser's signal is never denied: no subtransaction to catch a denial.
        let sent = if superuser {
            Ok(signal_if_unchanged(target, proc, &live, signal, first))
        } else {
            in_subtransaction(|| signal_if_unchanged(target, proc, &live, signal, first))
        };
        match sent {
            Ok(Some(delivery)) => return delivery,
            Ok(None) if changed < CHANGED_TRIES => changed += 1,
            Ok(None) => {
                return Delivery::KeptChanging(changed + 1);
            }
            Err(CaughtError::PostgresError(e))
                if e.sql_error_code() == PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE =>
            {
                // 16 moved the why of a denial from the message into the DETAIL: keep both.
                return Delivery::Denied(match e.detail() {
                    Some(detail) => format!("{}: {}", e.message(), detail.trim_end_matches('.')),
                    None => e.message().to_string(),
                });
            }
            Err(other) => other.rethrow(),
        }
    }
}

/// What a pinned look found.
enum Look {
    Done(Delivery),
    /// Its status entry was being rewritten: let go of the pin, look again shortly.
    Busy,
    /// The process, whose live values were copied (its identity already checked).
    Live(*mut pg_sys::PGPROC),
}

/// Under the pin: find the process, copy its live values into `live`, check its identity. Only
/// copies into room made before, and comparisons.
fn look(pin: &ProcArrayPin, target: &Target, live: &mut LiveActivity) -> Look {
    let hinted = target
        .slot
        .filter(|&slot| pin.backend_still_in_slot(slot, target.pid));
    let Some(proc) = hinted.or_else(|| pin.backend(target.pid)) else {
        // SAFETY: AuxiliaryPidGetProc only compares pids in the auxiliary PGPROC array.
        let auxiliary = !unsafe { pg_sys::AuxiliaryPidGetProc(target.pid) }.is_null();
        return Look::Done(if auxiliary {
            Delivery::NotABackend
        } else {
            Delivery::Exited
        });
    };
    match pin.live_state(proc, live) {
        LiveState::Known => {}
        LiveState::Starting => return Look::Done(Delivery::PidReused),
        LiveState::Busy => return Look::Busy,
    }
    // A backend on its way out clears its status entry before it leaves the proc array.
    if live.pid == 0 {
        return Look::Done(Delivery::Exited);
    }
    if live.pid != target.pid || Some(live.backend_start) != target.started_at {
        return Look::Done(Delivery::PidReused);
    }
    Look::Live(proc)
}

/// Pin the victim again and signal it if it still is the process `seen` copied and nothing it
/// showed has changed since; None if something has. Nothing slow between the check and the
/// signal.
fn signal_if_unchanged(
    target: &Target,
    proc: *mut pg_sys::PGPROC,
    seen: &LiveActivity,
    signal: Signal,
    first: bool,
) -> Option<Delivery> {
    let pin = ProcArrayPin::acquire();
    // The slot still holds the pid, and its status entry is unchanged since the copy: the same
    // process, still running (a backend clears its entry before it leaves the proc array), and
    // under the pin it cannot leave it. No search of the proc array: PostgreSQL's own signal
    // function does one, and with thousands of backends each costs a cache miss per PGPROC.
    if !pin.backend_still_in_slot(proc, target.pid) || !pin.unchanged_since(proc, seen) {
        return None;
    }
    if first {
        test_hooks::pause_before_signal();
    }
    // The reason, left immediately before the signal (fixed-size copies), for this process
    // and, for a cancel, the statement it runs now; a cancel of an idle session raises nothing
    // there, so it gets none.
    // (A fastpath function call has no statement start of its own: its cancel gets none.)
    let reason = target.reason.as_deref().and_then(|text| {
        let running = seen.state == pg_sys::BackendState::STATE_RUNNING;
        let (kind, statement) = match signal {
            Signal::Cancel if running => (reasons::Kind::Cancel, seen.query_start),
            Signal::Cancel => return None,
            Signal::Terminate => (reasons::Kind::Terminate, 0),
        };
        let key = reasons::Key {
            kind,
            pid: target.pid,
            backend_start: seen.backend_start,
            statement_start: statement,
        };
        reasons::leave(proc, key, text).then_some(key)
    });
    if test_hooks::withhold_signal() {
        return Some(Delivery::StoppedMatching);
    }
    let withdraw = || {
        if let Some(key) = reason {
            reasons::withdraw(proc, key);
        }
    };
    let pid = target.pid.into_datum();
    // Nothing under the pin reads a catalog: the role checks below hit the catcache for the
    // roles warmed before the pin (the victim's role is the one warmed: it is unchanged since
    // the copy).
    let delivered = PgTryBuilder::new(AssertUnwindSafe(|| {
        // SAFETY: PostgreSQL's own SQL-callable functions with their declared arguments (the
        // same in every supported major); they run no CHECK_FOR_INTERRUPTS, and a denial
        // (42501) releases the pin in the (sub)transaction's abort.
        unsafe {
            match signal {
                Signal::Cancel => direct_function_call::<bool>(pg_sys::pg_cancel_backend, &[pid]),
                Signal::Terminate => direct_function_call::<bool>(
                    pg_sys::pg_terminate_backend,
                    &[pid, 0i64.into_datum()],
                ),
            }
        }
    }))
    .catch_others(|e| {
        // Not signalled (a denial, most likely): nor told.
        withdraw();
        e.rethrow()
    })
    .execute();
    if delivered != Some(true) {
        withdraw();
    }
    drop(pin);
    Some(if delivered == Some(true) {
        DELIVERED.with(|d| d.set(d.get() + 1));
        Delivery::Delivered
    } else {
        Delivery::Failed(
            "PostgreSQL could not send the signal; its WARNING in the server log says why".into(),
        )
    })
}

/// The session's activity columns and application_name, from a copy of its live status entry
/// and wait event (the query text if it was copied).
fn update_activity(s: &mut Session, live: &LiveActivity, with_query: bool) {
    let ts = |t: i64| (t != 0).then_some(t);
    s.state = compat::state_name(live.state).map(str::to_string);
    s.xact_start = ts(live.xact_start);
    s.query_start = ts(live.query_start);
    s.state_change = ts(live.state_change);
    if with_query {
        s.query = compat::clip_activity(&live.query);
    }
    s.application_name = Some(String::from_utf8_lossy(&live.application_name).into_owned());
    (s.wait_event_type, s.wait_event) = compat::wait_event_names(live.wait_event_info);
}

/// Runs `f` in a subtransaction: committed when it returns, rolled back when it raises, the
/// error handed back. The pattern of PL/pgSQL's exception blocks: the error is copied and the
/// error state flushed before the rollback (pgrx copies and flushes at the FFI boundary where
/// it catches the error; flushing again here makes the order explicit and costs nothing).
#[allow(clippy::result_large_err)] // the error is rare and handled at once
pub fn in_subtransaction<R>(f: impl FnOnce() -> R) -> Result<R, CaughtError> {
    // SAFETY: the calls below are PostgreSQL's documented subtransaction protocol, as in
    // PL/pgSQL's exec_stmt_block: begin, then release on success or flush-and-roll-back on
    // error, restoring the caller's memory context and resource owner after each step.
    unsafe {
        let memory_context = pg_sys::CurrentMemoryContext;
        let resource_owner = pg_sys::CurrentResourceOwner;
        let restore = || {
            pg_sys::CurrentMemoryContext = memory_context;
            pg_sys::CurrentResourceOwner = resource_owner;
        };
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::CurrentMemoryContext = memory_context;
        PgTryBuilder::new(AssertUnwindSafe(|| {
            let result = f();
            pg_sys::ReleaseCurrentSubTransaction();
            restore();
            Ok(result)
        }))
        .catch_others(|e| {
            restore();
            pg_sys::FlushErrorState();
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            restore();
            Err(e)
        })
        .execute()
    }
}

/// Waits until every pid in `pending` has exited or `timeout` has passed, whichever comes
/// first, checking all of them every few milliseconds against one deadline. Returns, per pid,
/// how long after `started` it was seen gone (`None`: still alive at the deadline).
/// Cancellable: a query cancel or statement_timeout ends the wait with an ERROR.
pub fn wait_for_exit(
    pending: &[i32],
    started: Instant,
    timeout: Duration,
) -> Vec<Option<Duration>> {
    // A timeout too large to add is a wait without deadline (still cancellable).
    let deadline = started.checked_add(timeout);
    let mut gone_after: Vec<Option<Duration>> = vec![None; pending.len()];
    loop {
        let now = Instant::now();
        // As in PostgreSQL's own wait, a look taken after the deadline does not count: an
        // exit seen then may have come after it.
        if deadline.is_some_and(|d| now > d) {
            return gone_after;
        }
        for (pid, gone) in pending.iter().zip(gone_after.iter_mut()) {
            if gone.is_none() && !process_exists(*pid) {
                *gone = Some(now.duration_since(started));
            }
        }
        let left = deadline.map_or(POLL, |d| d.saturating_duration_since(now));
        if gone_after.iter().all(Option::is_some) || left.is_zero() {
            return gone_after;
        }
        sleep_interruptibly(POLL.min(left));
    }
}

/// As PostgreSQL's own wait in pg_terminate_backend: the process is gone when kill(pid, 0) fails.
fn process_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only asks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Sleeps on the latch, so that a cancel, a terminate or postmaster death is noticed at once.
/// No catalog snapshot is kept through the sleep (the worker holds no other: its xmin is then
/// clear while it waits).
pub fn sleep_interruptibly(duration: Duration) {
    compat::release_catalog_snapshot();
    // SAFETY: MyLatch is this backend's own latch.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            duration.as_millis().max(1) as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    check_for_interrupts!();
}

/// The pauses the test suite uses to reach the two windows of a signalling call; in a release
/// build (without the `test-hooks` feature) they are empty and the settings do not exist.
pub mod test_hooks {
    /// Between choosing the victims and re-checking them; a cancel still ends it at once.
    pub fn pause_before_recheck() {
        #[cfg(feature = "test-hooks")]
        {
            let ms = crate::guc::test_hooks::RECHECK_DELAY_MS.get().max(0) as u64;
            let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
            // A latch set by something else does not cut the pause short.
            while let Some(left) = until
                .checked_duration_since(std::time::Instant::now())
                .filter(|d| !d.is_zero())
            {
                super::sleep_interruptibly(left);
            }
        }
    }

    /// Whether to leave the victim's reason and withhold its signal (`pg_reaper.test_withhold_signal`).
    pub fn withhold_signal() -> bool {
        #[cfg(feature = "test-hooks")]
        return crate::guc::test_hooks::WITHHOLD_SIGNAL.get();
        #[cfg(not(feature = "test-hooks"))]
        false
    }

    /// A panic at the start of a run of the policy named by `pg_reaper.test_panic_policy`.
    pub fn panic_if_asked(policy: &str) {
        #[cfg(feature = "test-hooks")]
        if crate::guc::test_hooks::PANIC_POLICY
            .get()
            .is_some_and(|p| p.to_bytes() == policy.as_bytes())
        {
            panic!("pg_reaper test hook: policy \"{policy}\" panics, as asked");
        }
        #[cfg(not(feature = "test-hooks"))]
        let _ = policy;
    }

    /// With `pg_reaper.log_pin_hold`, a LOG line with the longest and the mean hold of the pin
    /// since the last one, and how many holds there were.
    pub fn report_pin_holds() {
        #[cfg(feature = "test-hooks")]
        {
            let (longest, total, n) = crate::compat::take_pin_holds();
            if crate::guc::test_hooks::LOG_PIN_HOLD.get() {
                pgrx::log!(
                    "pg_reaper test: ProcArrayLock held at most {} us in {n} holds, {} us on average",
                    longest.as_micros(),
                    total.as_micros() / u128::from(n.max(1))
                );
            }
        }
    }

    /// Test builds check that no filter is ever matched with the pin held: its cost is the
    /// filter writer's to choose.
    pub fn assert_unpinned() {
        #[cfg(feature = "test-hooks")]
        // SAFETY: asks whether this backend holds the lock; no side effect.
        if unsafe { pgrx::pg_sys::LWLockHeldByMe(crate::compat::proc_array_lock()) } {
            pgrx::error!("pg_reaper test hook: a filter was matched with ProcArrayLock held");
        }
    }

    /// Between the re-check and the first victim's pinned check (not pinned).
    pub fn pause_before_check() {
        #[cfg(feature = "test-hooks")]
        {
            let ms = crate::guc::test_hooks::CHECK_DELAY_MS.get().max(0) as u64;
            let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
            while let Some(left) = until
                .checked_duration_since(std::time::Instant::now())
                .filter(|d| !d.is_zero())
            {
                super::sleep_interruptibly(left);
            }
        }
    }

    /// Between the first victim's identity check and its signal, with the victim pinned: every
    /// connection, exit and commit in the cluster waits meanwhile (tests only).
    /// Interrupts are held off while a lightweight lock is held, so this sleeps on the latch
    /// without checking for them; postmaster death still ends it.
    pub fn pause_before_signal() {
        #[cfg(feature = "test-hooks")]
        {
            let ms = crate::guc::test_hooks::SIGNAL_DELAY_MS.get().max(0) as u64;
            let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
            while let Some(left) = until
                .checked_duration_since(std::time::Instant::now())
                .filter(|d| !d.is_zero())
            {
                // SAFETY: MyLatch is this backend's own latch.
                unsafe {
                    pgrx::pg_sys::WaitLatch(
                        pgrx::pg_sys::MyLatch,
                        (pgrx::pg_sys::WL_LATCH_SET
                            | pgrx::pg_sys::WL_TIMEOUT
                            | pgrx::pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                        left.as_millis().max(1) as std::ffi::c_long,
                        pgrx::pg_sys::PG_WAIT_EXTENSION,
                    );
                    pgrx::pg_sys::ResetLatch(pgrx::pg_sys::MyLatch);
                }
            }
        }
    }
}
