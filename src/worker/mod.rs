//! The background worker: with `shared_preload_libraries = 'pg_reaper'`, one process that runs
//! every enabled policy with a `run_every` on its schedule, as `run_policy` would (the owner's
//! privileges, the re-check, the wait, the LOG line, the audit row where one can be written),
//! on a primary and on hot standbys alike. It is one more caller of the same pipeline.
//!
//! It connects to `pg_reaper.database`. A database that does not exist makes that connection
//! fail (FATAL, once); the postmaster restarts the worker, which, seeing in shared memory that
//! the previous one died connecting, connects to no database and waits quietly until it exists.

mod schedule;
pub mod status;

use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::pg_sys::PgTryBuilder;
use pgrx::prelude::*;

use crate::guc;
use schedule::Schedule;
use status::{State, STATUS};

/// The worker's bgw_type: its `backend_type` in pg_stat_activity, and its application_name.
pub const WORKER_TYPE: &str = "pg_reaper worker";

/// How long the worker sleeps at most: table changes are followed within this.
const CYCLE: Duration = Duration::from_secs(1);

/// Registers the worker and its shared memory; called from _PG_init while the postmaster
/// loads shared_preload_libraries.
pub fn register() {
    pgrx::pg_shmem_init!(STATUS = status::WorkerStatus::new());
    BackgroundWorkerBuilder::new(WORKER_TYPE)
        .set_type(WORKER_TYPE)
        .set_library("pg_reaper")
        .set_function("pg_reaper_worker_main")
        .enable_spi_access()
        // Once the server accepts read-only connections: primaries and hot standbys alike.
        // (After enable_spi_access, which sets its own start time.)
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
    LOADED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether this server loaded pg_reaper at start (and so has a worker and its status).
static LOADED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn loaded() -> bool {
    LOADED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The worker process's entry point.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_reaper_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = guc::database();
    let died_connecting = {
        let mut s = STATUS.exclusive();
        // SAFETY: this process's own pid and the clock.
        s.pid = unsafe { pg_sys::MyProcPid };
        s.started_at = unsafe { pg_sys::GetCurrentTimestamp() };
        s.state = State::Starting;
        s.database.set(&database);
        s.message.set("");
        std::mem::replace(&mut s.connecting, true)
    };
    if died_connecting {
        wait_for_database(&database);
    }
    let name = std::ffi::CString::new(database.clone()).unwrap_or_default();
    // SAFETY: connects this worker to the database as the bootstrap superuser, once; a missing
    // database is a FATAL, after which the restarted worker waits for it (above).
    unsafe {
        pg_sys::BackgroundWorkerInitializeConnection(name.as_ptr(), std::ptr::null(), 0);
    }
    STATUS.exclusive().connecting = false;
    set_application_name();
    run(&database);
}

/// Connected to no database (shared catalogs only), waits until `database` exists, then exits
/// so that the postmaster starts a worker that connects to it. One LOG line says what is
/// missing; the wait itself is quiet.
fn wait_for_database(database: &str) -> ! {
    // SAFETY: connects to no database, once.
    unsafe { pg_sys::BackgroundWorkerInitializeConnection(std::ptr::null(), std::ptr::null(), 0) };
    set_application_name();
    let message = format!(
        "database \"{database}\" (pg_reaper.database) does not exist; the worker waits for it"
    );
    log!("pg_reaper worker: {message}");
    {
        let mut s = STATUS.exclusive();
        s.state = State::WaitingForDatabase;
        s.message.set(&message);
    }
    let name = std::ffi::CString::new(database).unwrap_or_default();
    for cycle in 1u64.. {
        report_idle(&message, cycle);
        if !BackgroundWorker::wait_latch(Some(CYCLE)) {
            exit_to_be_restarted();
        }
        if reload_config(database) {
            exit_to_be_restarted();
        }
        let exists = in_transaction("looking for the database", || {
            // SAFETY: a syscache lookup on the shared catalog pg_database, in a transaction.
            unsafe { pg_sys::get_database_oid(name.as_ptr(), true) != pg_sys::InvalidOid }
        })
        .unwrap_or(false);
        if exists {
            log!("pg_reaper worker: database \"{database}\" exists now; connecting to it");
            STATUS.exclusive().connecting = false;
            exit_to_be_restarted();
        }
    }
    unreachable!("the cycles never end")
}

/// The worker's loop: each cycle reads the scheduled policies and runs those that are due; it
/// sleeps until the next one is, and at most a second.
fn run(database: &str) -> ! {
    let mut schedule = Schedule::default();
    for cycle in 1u64.. {
        let wake = if guc::WORKER.get() {
            schedule.cycle(database)
        } else {
            schedule.park();
            Instant::now() + CYCLE
        };
        let doing = match STATUS.share().message.get() {
            m if m.is_empty() => "enforcing the scheduled policies".to_string(),
            m => m,
        };
        report_idle(&doing, cycle);
        let sleep = wake
            .saturating_duration_since(Instant::now())
            .min(CYCLE)
            .max(Duration::from_millis(1));
        if !BackgroundWorker::wait_latch(Some(sleep)) {
            exit_to_be_restarted();
        }
        if reload_config(database) {
            log!("pg_reaper worker: pg_reaper.database changed; restarting to connect to the new one");
            exit_to_be_restarted();
        }
    }
    unreachable!("the cycles never end")
}

/// Between cycles pg_stat_activity shows the worker idle, saying what it does and counting its
/// cycles: "pg_reaper worker: enforcing the scheduled policies (cycle 42)".
fn report_idle(doing: &str, cycle: u64) {
    let text = std::ffi::CString::new(format!("{WORKER_TYPE}: {doing} (cycle {cycle})"))
        .unwrap_or_default();
    // SAFETY: reports this process's own activity.
    unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, text.as_ptr()) };
}

/// Applies a SIGHUP, if one came; true when pg_reaper.database no longer names `database`.
fn reload_config(database: &str) -> bool {
    if BackgroundWorker::sighup_received() {
        // SAFETY: what PostgreSQL's own processes do on SIGHUP.
        unsafe {
            pg_sys::ConfigReloadPending = 0;
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
        }
    }
    guc::database() != database
}

/// Ends the process with exit code 1, which the postmaster answers by starting the worker
/// again a second later (exit code 0 would unregister it until the server restarts). The
/// postmaster's own shutdown stops it for good.
fn exit_to_be_restarted() -> ! {
    STATUS.exclusive().pid = 0;
    // SAFETY: the normal way out of a background worker.
    unsafe { pg_sys::proc_exit(1) }
}

/// `application_name = 'pg_reaper worker'`, as pg_stat_activity and log_line_prefix show it.
fn set_application_name() {
    let name = std::ffi::CString::new(WORKER_TYPE).unwrap();
    // SAFETY: sets a user-settable GUC for this session; its assign hook reports it to
    // pg_stat_activity.
    unsafe {
        pg_sys::SetConfigOption(
            c"application_name".as_ptr(),
            name.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
        );
    }
}

thread_local! {
    /// The last error said in the server log for each thing the worker does.
    static SAID: std::cell::RefCell<std::collections::HashMap<String, String>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Runs `f` in a transaction of its own; an error (or a panic) is logged and rolled back, and
/// the worker goes on. Returns the error's message on error.
fn in_transaction<R>(what: &str, f: impl FnOnce() -> R) -> Result<R, String> {
    // SAFETY: the worker's memory context outlives every transaction; restored after an abort.
    let context = unsafe { pg_sys::CurrentMemoryContext };
    PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
        Ok(BackgroundWorker::transaction(std::panic::AssertUnwindSafe(
            f,
        )))
    }))
    .catch_others(|e| {
        // SAFETY: the error is already copied and flushed; this rolls the transaction back, as
        // PostgreSQL's own workers do after an error, and puts the memory context back.
        unsafe {
            pg_sys::AbortCurrentTransaction();
            pg_sys::CurrentMemoryContext = context;
        }
        let error = crate::report::message(&e);
        let message = format!("{what} failed: {error}");
        // Said once while the same thing keeps failing the same way: cycles come every second,
        // runs every 100 ms.
        let new = SAID.with(|said| {
            said.borrow_mut()
                .insert(what.to_string(), error.clone())
                .as_deref()
                != Some(&error)
        });
        if new {
            log!("pg_reaper worker: {message}");
        }
        STATUS.exclusive().message.set(&message);
        Err(error)
    })
    .execute()
}
