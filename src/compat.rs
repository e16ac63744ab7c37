//! The one module that reads PostgreSQL's internals, and what differs between its majors.
//! Each difference is a small function with one arm per major, and a comment saying which
//! major changed what. Everything else in pg_reaper is the same for every major.
//!
//! Shared memory that other processes write is only ever read through raw pointers, with
//! `read_volatile`, never through a Rust reference.

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;

use crate::filter::{Vocabulary, KNOWN_WORKER_TYPES, STATES};
use std::ptr::{addr_of, addr_of_mut};
use std::sync::atomic::{fence, Ordering};

use pgrx::pg_sys;

/// Reserves the `pg_reaper.` prefix for the settings this library defines, so that a
/// misspelt one is an error rather than a silent placeholder.
pub fn reserve_guc_prefix(prefix: &CStr) {
    // SAFETY: called from _PG_init with a static, NUL-terminated name.
    unsafe {
        // 15 renamed EmitWarningsOnPlaceholders to MarkGUCPrefixReserved and made it also
        // refuse later SETs of unknown names under the prefix; 14 only warns at load time.
        #[cfg(feature = "pg14")]
        pg_sys::EmitWarningsOnPlaceholders(prefix.as_ptr());
        #[cfg(not(feature = "pg14"))]
        pg_sys::MarkGUCPrefixReserved(prefix.as_ptr());
    }
}

/// Drops this transaction's copy of the backend status array, and nothing else, so that the
/// next read is fresh. (pgstat_clear_snapshot would also throw away the caller's cumulative
/// statistics snapshot, which `stats_fetch_consistency = snapshot` promises to keep.)
pub fn clear_activity_snapshot() {
    // SAFETY: frees backend-local memory and resets backend-local pointers; nothing read from
    // the old copy is kept past this point.
    unsafe { pg_sys::pgstat_clear_backend_activity_snapshot() }
}

/// pg_stat_activity's visibility rule (HAS_PGSTAT_PERMISSIONS): may the current role see the
/// details of `role`'s sessions?
pub fn may_see_sessions_of(role: pg_sys::Oid) -> bool {
    // SAFETY: plain catalog checks on role oids, inside a transaction.
    unsafe {
        let me = pg_sys::GetUserId();
        let read_all_stats = pg_sys::Oid::from(pg_sys::ROLE_PG_READ_ALL_STATS);
        // 15 made pg_read_all_stats count only with its privileges (has_privs_of_role); in 14
        // bare membership was enough (is_member_of_role), NOINHERIT or not.
        #[cfg(feature = "pg14")]
        let all = pg_sys::is_member_of_role(me, read_all_stats);
        #[cfg(not(feature = "pg14"))]
        let all = pg_sys::has_privs_of_role(me, read_all_stats);
        all || pg_sys::has_privs_of_role(me, role)
    }
}

/// How many entries this transaction's copy of the status array has (reading it if needed).
pub fn local_backend_count() -> i32 {
    // SAFETY: reads (and caches) the backend-local copy.
    unsafe { pg_sys::pgstat_fetch_stat_numbackends() }
}

/// Entry `index` (1-based) of this transaction's copy of the status array.
pub fn local_backend_status(index: i32) -> Option<pg_sys::PgBackendStatus> {
    // SAFETY: the index is within 1..=local_backend_count(); the result is NULL or points into
    // the backend-local copy, which lives until the next clear_activity_snapshot.
    unsafe {
        // 16 renamed pgstat_fetch_stat_local_beentry to pgstat_get_local_beentry_by_index.
        #[cfg(any(feature = "pg14", feature = "pg15"))]
        let local = pg_sys::pgstat_fetch_stat_local_beentry(index);
        #[cfg(not(any(feature = "pg14", feature = "pg15")))]
        let local = pg_sys::pgstat_get_local_beentry_by_index(index);
        local.as_ref().map(|l| l.backendStatus)
    }
}

/// Every process's PGPROC by pid, found in one pass over the PGPROC array: the wait events
/// and the lock-wait pointers of a whole snapshot without a proc-array scan per backend.
pub struct ProcsByPid {
    procs: HashMap<i32, *mut pg_sys::PGPROC>,
}

impl ProcsByPid {
    pub fn read() -> ProcsByPid {
        let mut procs = HashMap::new();
        let mut ambiguous = HashSet::new();
        // SAFETY: ProcGlobal and its allProcs array are set up at server start and never move;
        // allProcCount is fixed. Each pid is read with one volatile load: a slot being reused
        // concurrently gives an old or a new pid, never a torn one.
        unsafe {
            let global = pg_sys::ProcGlobal;
            let all = (*global).allProcs;
            for i in 0..(*global).allProcCount as usize {
                let proc = all.add(i);
                let pid = addr_of!((*proc).pid).read_volatile();
                if pid != 0 && procs.insert(pid, proc).is_some() {
                    ambiguous.insert(pid);
                }
            }
            // A slot that a process left may still hold its pid; when that pid appears twice,
            // ask the proc arrays which slot is live.
            for pid in ambiguous {
                let mut proc = pg_sys::BackendPidGetProc(pid);
                if proc.is_null() {
                    proc = pg_sys::AuxiliaryPidGetProc(pid);
                }
                if proc.is_null() {
                    procs.remove(&pid);
                } else {
                    procs.insert(pid, proc);
                }
            }
        }
        ProcsByPid { procs }
    }

    /// The process's current wait event (pg_stat_activity reads it the same way, unlocked).
    pub fn wait_event_info(&self, pid: i32) -> Option<u32> {
        let proc = *self.procs.get(&pid)?;
        // SAFETY: `proc` points into the PGPROC array, which never moves; one volatile load.
        Some(unsafe { addr_of!((*proc).wait_event_info).read_volatile() })
    }

    /// The pids of the processes that wait for a heavyweight lock right now: the only ones the
    /// lock manager need be asked about.
    pub fn lock_waiters(&self) -> Vec<i32> {
        self.procs
            .iter()
            // SAFETY: as above; the pointer is only compared with NULL.
            .filter(|&(_, &proc)| unsafe { !addr_of!((*proc).waitLock).read_volatile().is_null() })
            .map(|(&pid, _)| pid)
            .collect()
    }
}

/// ProcArrayLock, held in shared mode: while it is held no process can leave the proc array,
/// so a backend found there cannot exit and have its pid handed to another process.
/// Released on drop, and by transaction abort if an ERROR unwinds past it.
pub struct ProcArrayPin(());

impl ProcArrayPin {
    pub fn acquire() -> ProcArrayPin {
        // SAFETY: MainLWLockArray is set up at server start; the lock is released on drop or
        // by LWLockReleaseAll at (sub)transaction abort.
        unsafe { pg_sys::LWLockAcquire(proc_array_lock(), pg_sys::LWLockMode::LW_SHARED) };
        ProcArrayPin(())
    }

    /// The backend with this pid, if it is in the proc array.
    pub fn backend(&self, pid: i32) -> Option<*mut pg_sys::PGPROC> {
        // SAFETY: ProcArrayLock is held, as BackendPidGetProcWithLock requires.
        let proc = unsafe { pg_sys::BackendPidGetProcWithLock(pid) };
        (!proc.is_null()).then_some(proc)
    }

    /// What `proc`'s entry of the live backend status array says now, read with the status
    /// array's change-count protocol.
    pub fn live_identity(&self, proc: *mut pg_sys::PGPROC) -> LiveIdentity {
        // A reader spinning while it holds a lock must give up at some point (a writer stopped
        // half-way, say); PostgreSQL's writers hold the odd count for a few instructions.
        const MAX_SPINS: u32 = 100_000;
        let Some(entry) = live_status_entry(proc) else {
            return LiveIdentity::Starting;
        };
        for _ in 0..MAX_SPINS {
            // SAFETY: `entry` points into the status array in shared memory, which never
            // moves; the fields are read with volatile loads between two reads of the change
            // count, as pgstat_begin_read_activity / pgstat_end_read_activity do, and the
            // result is used only when the count was even and unchanged.
            unsafe {
                let before = addr_of!((*entry).st_changecount).read_volatile();
                fence(Ordering::Acquire);
                let pid = addr_of!((*entry).st_procpid).read_volatile();
                let started = addr_of!((*entry).st_proc_start_timestamp).read_volatile();
                fence(Ordering::Acquire);
                let after = addr_of!((*entry).st_changecount).read_volatile();
                if before == after && before % 2 == 0 {
                    return LiveIdentity::Known { pid, started };
                }
            }
            std::hint::spin_loop();
        }
        LiveIdentity::Busy
    }
}

/// A live status entry's answer to "who are you?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveIdentity {
    /// The pid and start time it holds (pid 0: the process is on its way out).
    Known { pid: i32, started: i64 },
    /// The process has no entry yet: it is still starting.
    Starting,
    /// The entry was being rewritten for as long as we were willing to wait.
    Busy,
}

impl Drop for ProcArrayPin {
    fn drop(&mut self) {
        // SAFETY: acquired in `acquire`, released once.
        unsafe { pg_sys::LWLockRelease(proc_array_lock()) };
    }
}

/// ProcArrayLock is entry 4 of the main LWLock array in every supported major
/// (lwlocknames.txt in 14..16, lwlocklist.h in 17 and 18); the C macro is not in the bindings.
pub fn proc_array_lock() -> *mut pg_sys::LWLock {
    const PROC_ARRAY_LOCK: usize = 4;
    // SAFETY: MainLWLockArray has far more than five entries and never moves.
    unsafe { addr_of_mut!((*pg_sys::MainLWLockArray.add(PROC_ARRAY_LOCK)).lock) }
}

/// The live status-array entry of a process in the proc array. The array itself is static in
/// backend_status.c; it is found from our own entry (MyBEEntry) and our own index in it.
fn live_status_entry(proc: *mut pg_sys::PGPROC) -> Option<*const pg_sys::PgBackendStatus> {
    let (mine, theirs) = status_indexes(proc)?;
    // SAFETY: MyBEEntry is this backend's entry, at index `mine` of the status array, whose
    // first MaxBackends entries belong to backends; `theirs` was checked to be below that.
    unsafe {
        let base = pg_sys::MyBEEntry.cast_const().sub(mine);
        Some(base.add(theirs))
    }
}

/// (this backend's index, `proc`'s index) in the status array, or None if `proc` has none yet.
fn status_indexes(proc: *mut pg_sys::PGPROC) -> Option<(usize, usize)> {
    // SAFETY: `proc` points into the PGPROC array; one volatile load of its own index field.
    unsafe {
        let max = usize::try_from(pg_sys::MaxBackends).ok()?;
        // 17 replaced backend ids (1-based, assigned by the shared-invalidation module a moment
        // after the process joins the proc array) with proc numbers (the PGPROC's own index),
        // and indexes the status array by them.
        #[cfg(any(feature = "pg14", feature = "pg15", feature = "pg16"))]
        let (mine, theirs) = (
            i64::from(pg_sys::MyBackendId) - 1,
            i64::from(addr_of!((*proc).backendId).read_volatile()) - 1,
        );
        #[cfg(not(any(feature = "pg14", feature = "pg15", feature = "pg16")))]
        let (mine, theirs) = (
            i64::from(pg_sys::MyProcNumber),
            proc.offset_from((*pg_sys::ProcGlobal).allProcs) as i64,
        );
        let mine = usize::try_from(mine).ok().filter(|i| *i < max)?;
        let theirs = usize::try_from(theirs).ok().filter(|i| *i < max)?;
        Some((mine, theirs))
    }
}

/// Fills the role caches that pg_signal_backend's permission checks read, so that while the
/// victim is pinned (ProcArrayLock held) those checks find everything cached and touch no
/// catalog: no buffer I/O, no heavyweight lock, under a lightweight one.
pub fn prewarm_signal_permissions(target_role: pg_sys::Oid) {
    // SAFETY: plain catalog checks on role oids, inside a transaction.
    unsafe {
        let me = pg_sys::GetUserId();
        pg_sys::superuser();
        pg_sys::superuser_arg(target_role);
        pg_sys::has_privs_of_role(me, target_role);
        pg_sys::has_privs_of_role(me, pg_sys::Oid::from(pg_sys::ROLE_PG_SIGNAL_BACKEND));
        // 18 lets members of pg_signal_autovacuum_worker signal autovacuum workers.
        #[cfg(feature = "pg18")]
        pg_sys::has_privs_of_role(
            me,
            pg_sys::Oid::from(pg_sys::ROLE_PG_SIGNAL_AUTOVACUUM_WORKER),
        );
    }
}

/// Whether `member` may act as `role`, as SET ROLE would allow it.
pub fn may_act_as(member: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    // SAFETY: plain catalog checks on role oids, inside a transaction.
    unsafe {
        // 16 split membership into ADMIN, INHERIT and SET options; SET ROLE needs the SET
        // option along the chain (member_can_set_role). Before 16 any membership allowed it.
        #[cfg(any(feature = "pg14", feature = "pg15"))]
        return pg_sys::is_member_of_role(member, role);
        #[cfg(not(any(feature = "pg14", feature = "pg15")))]
        return pg_sys::member_can_set_role(member, role);
    }
}

/// The running server's vocabulary for exact `state` and `backend_type` values. With
/// `running_workers`, the types of the background workers running now (and visible to the
/// caller) are added: that needs a read of the status array, so it is only asked for when a
/// filter names a type the static lists lack.
pub fn server_vocabulary(running_workers: bool) -> Vocabulary {
    // 18 shows a backend that is still authenticating as `starting`.
    #[cfg(feature = "pg18")]
    const NEW_STATES: &[&str] = &["starting"];
    #[cfg(not(feature = "pg18"))]
    const NEW_STATES: &[&str] = &[];
    let states = STATES
        .iter()
        .chain(NEW_STATES)
        .map(|s| s.to_string())
        .collect();
    let mut backend_types: Vec<String> = backend_type_names();
    backend_types.extend(KNOWN_WORKER_TYPES.iter().map(|s| s.to_string()));
    if running_workers {
        for i in 1..=local_backend_count() {
            let Some(st) = local_backend_status(i) else {
                continue;
            };
            if st.st_backendType != pg_sys::BackendType::B_BG_WORKER
                || !may_see_sessions_of(st.st_userid)
            {
                continue;
            }
            // SAFETY: returns NULL or a string in a static buffer, copied at once.
            let name = unsafe { pg_sys::GetBackgroundWorkerTypeByPid(st.st_procpid) };
            if !name.is_null() {
                // SAFETY: a NUL-terminated string (see above).
                let name = unsafe { CStr::from_ptr(name) }
                    .to_string_lossy()
                    .into_owned();
                backend_types.push(name);
            }
        }
    }
    Vocabulary {
        server: format!("PostgreSQL {}", pg_sys::PG_MAJORVERSION_NUM),
        states,
        backend_types,
    }
}

/// The server's own process types, as pg_stat_activity names them (GetBackendTypeDesc). Each
/// major numbers them differently (17 reordered them; 16, 17 and 18 added some), so they are
/// enumerated rather than listed. "background worker" is left out: pg_stat_activity shows a
/// background worker's own type instead.
fn backend_type_names() -> Vec<String> {
    const UNKNOWN: &str = "unknown process type";
    (1..64)
        .filter_map(|t| {
            // SAFETY: returns a static string for every value, "unknown process type" for
            // values beyond the enum.
            let desc = unsafe { CStr::from_ptr(pg_sys::GetBackendTypeDesc(t)) };
            let desc = desc.to_string_lossy().into_owned();
            (desc != UNKNOWN && desc != "background worker").then_some(desc)
        })
        .collect()
}
