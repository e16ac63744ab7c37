//! The victim learns why. PostgreSQL lets no signaller pass a reason: the victim's own backend
//! builds the error its client receives. With pg_reaper in shared_preload_libraries it is loaded
//! in every backend, so the signaller leaves the reason in shared memory, in the victim's own
//! slot, keyed to the victim (pid and start time) and, for a cancel, to the statement running
//! when the signal was sent; the victim's `emit_log_hook` finds it when it reports the cancel
//! or the termination, adds it as the error's DETAIL (its client and its server-log line both
//! get it), and clears it. The SQLSTATE and the message stay PostgreSQL's own.
//!
//! Never stale: a reason is written only for a signal that is sent (immediately before it,
//! under the pin), only for a cancel of a running statement (a cancel that reaches an idle
//! session raises nothing), and is taken only by the error it was meant for: the same process,
//! the same statement, PostgreSQL's own message for a cancel by user request or a termination
//! by administrator command. A later plain pg_cancel_backend finds no reason for its statement
//! (and a cancel that an exception block caught drops its reason when the block aborts its
//! subtransaction); a statement_timeout has another message; a new backend that reused the pid,
//! or the slot, another start.
//!
//! Each slot is written and read with a change count (odd while written), as PostgreSQL's own
//! backend status entries are: no lock is taken, by the signaller under the pin nor by the
//! victim in its error path.

use std::ffi::{c_char, CStr};
use std::ptr::{addr_of, addr_of_mut};
use std::sync::atomic::{fence, AtomicU32, Ordering};

use pgrx::pg_sys;

/// The longest reason kept, in bytes (cut at a character boundary).
pub const MAX_REASON_BYTES: usize = 480;

/// What a reason is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    None = 0,
    Cancel = 1,
    Terminate = 2,
}

/// Whom a reason is for: the process (pid and start) and, for a cancel, its statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub kind: Kind,
    pub pid: i32,
    pub backend_start: i64,
    /// For a cancel: the start of the statement it is meant for (0 for a termination).
    pub statement_start: i64,
}

/// One victim's slot.
#[repr(C)]
struct Slot {
    /// Even when stable, odd while being written.
    changecount: AtomicU32,
    kind: u8,
    len: u16,
    pid: i32,
    backend_start: i64,
    /// For a cancel: the start of the statement it was meant for.
    statement_start: i64,
    text: [u8; MAX_REASON_BYTES],
}

/// The slots, one per backend (indexed by its PGPROC's position), in shared memory; NULL
/// where the library was not preloaded.
static mut SLOTS: *mut Slot = std::ptr::null_mut();
static mut SLOT_COUNT: usize = 0;

/// How many backends can be victims: PostgreSQL's MaxBackends (before 15, it is not known yet
/// when the library loads: its formula, from the settings it adds up).
fn slot_count() -> usize {
    // SAFETY: reads settings of the postmaster, set before shared memory is sized.
    unsafe {
        // (autovacuum_max_workers is not in 14's bindings: read as the setting it is.)
        #[cfg(feature = "pg14")]
        let n = pg_sys::MaxConnections
            + setting_i32(c"autovacuum_max_workers")
            + 1
            + pg_sys::max_worker_processes
            + pg_sys::max_wal_senders;
        #[cfg(not(feature = "pg14"))]
        let n = pg_sys::MaxBackends;
        usize::try_from(n).unwrap_or(0)
    }
}

/// An integer setting's value, 0 if it is unknown.
#[cfg(feature = "pg14")]
fn setting_i32(name: &CStr) -> i32 {
    // SAFETY: GetConfigOption returns NULL for an unknown setting (missing_ok), else a string
    // PostgreSQL owns; it is copied at once.
    unsafe {
        let value = pg_sys::GetConfigOption(name.as_ptr(), true, false);
        if value.is_null() {
            return 0;
        }
        CStr::from_ptr(value)
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

fn size() -> usize {
    slot_count() * std::mem::size_of::<Slot>()
}

/// Asks for the shared memory and installs the hooks; from _PG_init, while the postmaster
/// loads shared_preload_libraries.
pub fn register() {
    // SAFETY: hooks are installed once, in the postmaster, chaining whatever was there.
    unsafe {
        #[cfg(feature = "pg14")]
        pg_sys::RequestAddinShmemSpace(size());
        #[cfg(not(feature = "pg14"))]
        {
            PREV_REQUEST = pg_sys::shmem_request_hook;
            pg_sys::shmem_request_hook = Some(request);
        }
        PREV_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(startup);
        PREV_EMIT = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(emit);
        // Inherited by every backend the postmaster forks.
        pg_sys::RegisterSubXactCallback(Some(subtransaction_aborted), std::ptr::null_mut());
    }
}

/// A subtransaction that aborts has caught an error (a PL/pgSQL exception block, a savepoint
/// rolled back). If it was the cancel a reason was left for, the block may go on within the
/// same statement, and a later plain cancel of that statement must not find the reason: it is
/// dropped. The cost: a cancel that the block re-raises (a handler that does not catch
/// `query_canceled`) reaches its client without a DETAIL, since from here the two cannot be
/// told apart. Untold beats told wrong. (A termination is never caught: its reason stays.)
// SAFETY: called by xact.c with its own arguments; nothing here raises an error.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn subtransaction_aborted(
    event: pg_sys::SubXactEvent::Type,
    _my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        let _ = take(Kind::Cancel);
    }
}

#[cfg(not(feature = "pg14"))]
static mut PREV_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP: pg_sys::shmem_startup_hook_type = None;
static mut PREV_EMIT: pg_sys::emit_log_hook_type = None;

#[cfg(not(feature = "pg14"))]
// SAFETY: called by the postmaster's shmem_request_hook machinery, once.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn request() {
    // SAFETY: chains the previous hook, then asks for this module's space, as required there.
    unsafe {
        if let Some(prev) = PREV_REQUEST {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(size());
    }
}

// SAFETY: called by the postmaster's shmem_startup_hook machinery (and by each backend under
// EXEC_BACKEND), with the AddinShmemInitLock protocol below.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn startup() {
    // SAFETY: ShmemInitStruct under AddinShmemInitLock, as every extension does; the slots are
    // zeroed by whoever creates them.
    unsafe {
        if let Some(prev) = PREV_STARTUP {
            prev();
        }
        let lock = addr_of_mut!((*pg_sys::MainLWLockArray.add(ADDIN_SHMEM_INIT_LOCK)).lock);
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let slots = pg_sys::ShmemInitStruct(c"pg_reaper reasons".as_ptr(), size(), &mut found)
            .cast::<Slot>();
        if !found {
            std::ptr::write_bytes(slots.cast::<u8>(), 0, size());
        }
        SLOTS = slots;
        SLOT_COUNT = slot_count();
        pg_sys::LWLockRelease(lock);
    }
}

/// AddinShmemInitLock is entry 21 of the main LWLock array in every supported major (the C
/// macro is not in the bindings).
const ADDIN_SHMEM_INIT_LOCK: usize = 21;

/// The slot of the backend whose PGPROC is `proc`, if there is one.
fn slot_of(proc: *const pg_sys::PGPROC) -> Option<*mut Slot> {
    // SAFETY: SLOTS and SLOT_COUNT are set once at startup and never change; `proc` points into
    // the PGPROC array, whose first MaxBackends entries are the backends'.
    unsafe {
        let slots = SLOTS;
        if slots.is_null() || proc.is_null() {
            return None;
        }
        let index = usize::try_from(proc.offset_from((*pg_sys::ProcGlobal).allProcs)).ok()?;
        (index < SLOT_COUNT).then(|| slots.add(index))
    }
}

/// Whether reasons can be left here (the library was preloaded).
pub fn available() -> bool {
    // SAFETY: read of a pointer set once at startup.
    unsafe { !SLOTS.is_null() }
}

/// Leaves `text` for the backend whose PGPROC is `proc`, for `key`. Called under the pin,
/// immediately before the signal: fixed-size copies only. False if another signaller was
/// writing to the same slot at this instant (the reason is then theirs).
pub fn leave(proc: *const pg_sys::PGPROC, key: Key, text: &[u8]) -> bool {
    let Some(slot) = slot_of(proc) else {
        return false;
    };
    // SAFETY: `slot` is this backend's slot in shared memory; the fields are written between an
    // odd and an even change count, which a reader checks.
    unsafe {
        let Some(count) = begin_write(slot) else {
            return false;
        };
        let len = text.len().min(MAX_REASON_BYTES);
        addr_of_mut!((*slot).kind).write_volatile(key.kind as u8);
        addr_of_mut!((*slot).pid).write_volatile(key.pid);
        addr_of_mut!((*slot).backend_start).write_volatile(key.backend_start);
        addr_of_mut!((*slot).statement_start).write_volatile(key.statement_start);
        addr_of_mut!((*slot).len).write_volatile(len as u16);
        std::ptr::copy_nonoverlapping(text.as_ptr(), addr_of_mut!((*slot).text).cast(), len);
        end_write(count);
    }
    true
}

/// Takes back the reason left for `key` when its signal could not be sent (only that one:
/// another signaller may have left another since).
pub fn withdraw(proc: *const pg_sys::PGPROC, key: Key) {
    let Some(slot) = slot_of(proc) else { return };
    // SAFETY: as in `leave`.
    unsafe {
        let Some(count) = begin_write(slot) else {
            return;
        };
        let mine = addr_of!((*slot).kind).read_volatile() == key.kind as u8
            && addr_of!((*slot).pid).read_volatile() == key.pid
            && addr_of!((*slot).backend_start).read_volatile() == key.backend_start
            && addr_of!((*slot).statement_start).read_volatile() == key.statement_start;
        if mine {
            addr_of_mut!((*slot).kind).write_volatile(Kind::None as u8);
        }
        end_write(count);
    }
}

/// Makes the slot's change count odd, if no one else is writing; then a barrier, so that no
/// write that follows is seen before the odd count (as PostgreSQL's
/// PGSTAT_BEGIN_WRITE_ACTIVITY does with pg_write_barrier).
///
/// # Safety
/// `slot` is a slot in shared memory.
// SAFETY: an unsafe fn because of that contract.
unsafe fn begin_write(slot: *mut Slot) -> Option<(&'static AtomicU32, u32)> {
    // SAFETY: the change count is an aligned u32 in shared memory, only accessed atomically.
    let count = unsafe { AtomicU32::from_ptr(addr_of_mut!((*slot).changecount).cast()) };
    let before = count.load(Ordering::Relaxed);
    if before % 2 == 1
        || count
            .compare_exchange(before, before + 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        return None;
    }
    fence(Ordering::Release);
    Some((count, before))
}

/// Makes the change count even again, after the writes.
fn end_write((count, before): (&AtomicU32, u32)) {
    count.store(before + 2, Ordering::Release);
}

/// This backend's reason for `kind`, if one was left for it (and, for a cancel, for the
/// statement it runs now); cleared as it is taken.
fn take(kind: Kind) -> Option<String> {
    // SAFETY: reads this backend's own identity and its own status entry.
    let (me, start, statement) = unsafe {
        let entry = pg_sys::MyBEEntry;
        let statement = if entry.is_null() {
            0
        } else {
            addr_of!((*entry).st_activity_start_timestamp).read_volatile()
        };
        (pg_sys::MyProcPid, pg_sys::MyStartTimestamp, statement)
    };
    // SAFETY: MyProc is this backend's own PGPROC.
    let slot = slot_of(unsafe { pg_sys::MyProc })?;
    // SAFETY: the slot is read between two even, equal change counts; it is cleared under the
    // same protocol.
    unsafe {
        let count = AtomicU32::from_ptr(addr_of_mut!((*slot).changecount).cast());
        for _ in 0..100 {
            let before = count.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let found = addr_of!((*slot).kind).read_volatile() == kind as u8
                && addr_of!((*slot).pid).read_volatile() == me
                && addr_of!((*slot).backend_start).read_volatile() == start
                && (kind != Kind::Cancel
                    || addr_of!((*slot).statement_start).read_volatile() == statement);
            let len = usize::from(addr_of!((*slot).len).read_volatile()).min(MAX_REASON_BYTES);
            let mut text = [0u8; MAX_REASON_BYTES];
            std::ptr::copy_nonoverlapping(
                addr_of!((*slot).text).cast::<u8>(),
                text.as_mut_ptr(),
                len,
            );
            fence(Ordering::Acquire);
            if count.load(Ordering::Relaxed) != before {
                continue;
            }
            if !found {
                return None;
            }
            // Taken: clear it, unless someone is writing it again.
            if count
                .compare_exchange(before, before + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                fence(Ordering::Release);
                addr_of_mut!((*slot).kind).write_volatile(Kind::None as u8);
                count.store(before + 2, Ordering::Release);
            }
            return Some(String::from_utf8_lossy(&text[..len]).into_owned());
        }
        None
    }
}

/// PostgreSQL's own messages for the two signals, untranslated (`errmsg`'s format strings).
const CANCEL_MESSAGE: &CStr = c"canceling statement due to user request";
const TERMINATE_MESSAGE: &CStr = c"terminating connection due to administrator command";

/// emit_log_hook: for PostgreSQL's own report of a cancel by user request or a termination by
/// administrator command, the reason pg_reaper left for this backend, as its DETAIL. elog.c
/// calls the hook only for a message that goes to the server log (with `log_min_messages` above
/// its level, no DETAIL), before sending it to the server log and to the client, which both
/// get the DETAIL.
// SAFETY: called by elog.c with a valid ErrorData; nothing here raises an error.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn emit(edata: *mut pg_sys::ErrorData) {
    // SAFETY: `edata` is the error being reported; its strings live in ErrorContext, where the
    // DETAIL is allocated too.
    unsafe {
        if !edata.is_null() {
            add_reason(edata);
        }
        if let Some(prev) = PREV_EMIT {
            prev(edata);
        }
    }
}

/// # Safety
/// `edata` is the ErrorData elog.c reports.
// SAFETY: an unsafe fn because of that contract.
unsafe fn add_reason(edata: *mut pg_sys::ErrorData) {
    // SAFETY: as the caller promises.
    unsafe {
        let code = (*edata).sqlerrcode;
        let message = (*edata).message_id;
        if message.is_null() {
            return;
        }
        let message = CStr::from_ptr(message);
        let kind = if code == pgrx::PgSqlErrorCode::ERRCODE_QUERY_CANCELED as i32
            && message == CANCEL_MESSAGE
        {
            Kind::Cancel
        } else if code == pgrx::PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN as i32
            && message == TERMINATE_MESSAGE
        {
            Kind::Terminate
        } else {
            return;
        };
        let Some(reason) = take(kind) else { return };
        let Ok(reason) = std::ffi::CString::new(reason) else {
            return;
        };
        let detail = if (*edata).detail.is_null() {
            pg_sys::MemoryContextStrdup(pg_sys::ErrorContext, reason.as_ptr())
        } else {
            let joined = format!(
                "{}\n{}",
                CStr::from_ptr((*edata).detail).to_string_lossy(),
                reason.to_string_lossy()
            );
            let Ok(joined) = std::ffi::CString::new(joined) else {
                return;
            };
            pg_sys::MemoryContextStrdup(pg_sys::ErrorContext, joined.as_ptr())
        };
        (*edata).detail = detail.cast::<c_char>();
    }
}
