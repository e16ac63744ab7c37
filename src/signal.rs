//! Signal and wait. The signal itself is PostgreSQL's own `pg_cancel_backend` /
//! `pg_terminate_backend`, called directly (no catalog lookup, so no search_path can redirect
//! it) inside a subtransaction, so that its permission error becomes a `denied` row instead of
//! aborting the set. Whatever PostgreSQL would allow or forbid, we allow or forbid.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use pgrx::direct_function_call;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::pg_sys::PgTryBuilder;
use pgrx::prelude::*;

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

/// What became of one signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// The pid is no longer a PostgreSQL backend.
    Gone,
    /// PostgreSQL refused; its message.
    Denied(String),
}

/// Sends `signal` to `pid` with the current role's privileges.
pub fn send(pid: i32, signal: Signal) -> Delivery {
    // PostgreSQL would only WARN about a pid that is not a backend; say `vanished` quietly.
    if unsafe { pg_sys::BackendPidGetProc(pid) }.is_null() {
        return Delivery::Gone;
    }
    let call = || unsafe {
        let pid = pid.into_datum();
        match signal {
            Signal::Cancel => direct_function_call::<bool>(pg_sys::pg_cancel_backend, &[pid]),
            Signal::Terminate => direct_function_call::<bool>(
                pg_sys::pg_terminate_backend,
                &[pid, 0i64.into_datum()],
            ),
        }
    };
    match in_subtransaction(call) {
        Ok(Some(true)) => Delivery::Delivered,
        Ok(_) => Delivery::Gone,
        Err(CaughtError::PostgresError(e))
            if e.sql_error_code() == PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE =>
        {
            Delivery::Denied(e.message().to_string())
        }
        Err(other) => other.rethrow(),
    }
}

/// Runs `f` in a subtransaction: committed when it returns, rolled back when it raises, the
/// error handed back. The pattern of PL/pgSQL's exception blocks.
#[allow(clippy::result_large_err)] // the error is rare and handled at once
pub fn in_subtransaction<R>(f: impl FnOnce() -> R) -> Result<R, CaughtError> {
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
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Sleeps on the latch, so that a cancel, a terminate or postmaster death is noticed at once.
pub fn sleep_interruptibly(duration: Duration) {
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
