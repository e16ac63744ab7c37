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
    /// The PGPROC slot that held `pid` when the map was read (a hint: the slot may have been
    /// left, or taken by another process, since).
    pub fn slot(&self, pid: i32) -> Option<*mut pg_sys::PGPROC> {
        self.procs.get(&pid).copied()
    }

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

    /// Whether any process waits for a heavyweight lock right now (read without locks: a cheap
    /// first look, so that a snapshot in which nobody waits never touches the lock manager).
    pub fn any_lock_waiter(&self) -> bool {
        self.procs.values().any(|&proc| {
            // SAFETY: `proc` points into the PGPROC array; the pointer is only compared with
            // NULL.
            unsafe { !addr_of!((*proc).waitLock).read_volatile().is_null() }
        })
    }
}

/// Since when a process waits for a heavyweight lock (pg_locks.waitstart): None if it does not,
/// or in the moment between the start of its wait and the timestamp's write. (PGPROC.waitStart
/// came with 14.) A wait that ended in an error (a lock timeout, a cancel, a deadlock) leaves
/// its waitStart behind, and the next wait writes a new one only once it sleeps: the start is
/// trusted only while the process reports a Lock wait event, which it sets after writing
/// waitStart.
fn lock_wait_start(proc: *mut pg_sys::PGPROC) -> Option<i64> {
    // SAFETY: `proc` points into the PGPROC array; waitLock is compared with NULL,
    // wait_event_info read with one volatile load, and the 64-bit atomic waitStart read
    // atomically (as pg_lock_status reads it), after an acquire fence.
    unsafe {
        if addr_of!((*proc).waitLock).read_volatile().is_null() {
            return None;
        }
        let event = addr_of!((*proc).wait_event_info).read_volatile();
        if event & 0xFF00_0000 != pg_sys::PG_WAIT_LOCK {
            return None;
        }
        fence(Ordering::Acquire);
        let cell = addr_of_mut!((*proc).waitStart.value);
        let start = std::sync::atomic::AtomicU64::from_ptr(cell).load(Ordering::Relaxed) as i64;
        (start != 0).then_some(start)
    }
}

/// How many elements a lock's list may have: one PROCLOCK per PGPROC at most, prepared
/// transactions' included (set by `set_lock_list_bound` before the locks are taken).
static LIST_BOUND: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Works out the bound of the lock lists from the PGPROCs and max_prepared_transactions, before
/// the partition locks are taken.
pub fn set_lock_list_bound() {
    // SAFETY: ProcGlobal is set up at server start; GetConfigOption reads a setting.
    let (procs, prepared) = unsafe {
        let prepared = pg_sys::GetConfigOption(c"max_prepared_transactions".as_ptr(), true, false);
        let prepared = if prepared.is_null() {
            0
        } else {
            std::ffi::CStr::from_ptr(prepared)
                .to_str()
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0)
        };
        ((*pg_sys::ProcGlobal).allProcCount as usize, prepared)
    };
    LIST_BOUND.store(2 * (procs + prepared) + 1024, Ordering::Relaxed);
}

/// What the look at the lock manager copies, with every lock-manager partition lock held
/// (shared): the processes that wait for a heavyweight lock and the members of their lock
/// groups, into `into.waiting`; then each awaited lock's holders and wait queue, in order, once
/// however many wait for it, into `into.queues`; and the transaction ids of the prepared
/// transactions among the holders, with where they hold (queue, holder), into `prepared`. Only
/// copies: what they mean is worked out after the locks are released.
///
/// # Safety
/// Every lock-manager partition lock is held by the caller: it protects each PGPROC's
/// `waitLock` and lock-group fields and every LOCK and PROCLOCK read here.
// SAFETY: an unsafe fn because of that contract; `locks::LockManagerLook` holds the locks.
pub unsafe fn copy_lock_waits(
    into: &mut crate::filter::Waits,
    prepared: &mut Vec<(usize, usize, u32)>,
) {
    use crate::filter::{Holder, LockQueue, Queued, WaitingProcess, MAX_LOCK_MODE};
    // SAFETY: ProcGlobal and its allProcs array are set up at server start and never move;
    // every field read is protected by the partition locks the caller holds (or, for pid,
    // cannot change while the process waits for or holds a lock).
    unsafe {
        let global = pg_sys::ProcGlobal;
        let all = (*global).allProcs;
        let n = (*global).allProcCount as usize;
        let leader_of = |proc: *mut pg_sys::PGPROC| {
            let leader = addr_of!((*proc).lockGroupLeader).read_volatile();
            if leader.is_null() {
                proc
            } else {
                leader
            }
        };
        // A group is named by its leader's pid; a leader without one (a prepared transaction,
        // or a parallel leader gone before its workers) by a number below 0 of its own, so
        // that no two such groups merge into one node of the graph.
        let group_of = |leader: *mut pg_sys::PGPROC| {
            let pid = addr_of!((*leader).pid).read_volatile();
            if pid != 0 {
                pid
            } else {
                -1 - i32::try_from(leader.offset_from(all)).unwrap_or(i32::MAX - 1)
            }
        };
        // Room for every PGPROC at once (the caller made room in `into` before the locks):
        // what grows under the locks is only the holder and waiter lists.
        let mut waiting_groups = HashSet::with_capacity(n);
        let mut locks: Vec<*mut pg_sys::LOCK> = Vec::with_capacity(n);
        let mut seen_locks = HashSet::with_capacity(n);
        for i in 0..n {
            let proc = all.add(i);
            let lock = addr_of!((*proc).waitLock).read_volatile();
            if !lock.is_null() {
                waiting_groups.insert(leader_of(proc));
                if seen_locks.insert(lock) {
                    locks.push(lock);
                }
            }
        }
        if locks.is_empty() {
            return;
        }
        for i in 0..n {
            let proc = all.add(i);
            let pid = addr_of!((*proc).pid).read_volatile();
            let leader = leader_of(proc);
            if pid != 0 && waiting_groups.contains(&leader) {
                into.waiting.push(WaitingProcess {
                    pid,
                    group: group_of(leader),
                    wait_start: lock_wait_start(proc),
                });
            }
        }
        for lock in locks {
            let mut queue = LockQueue::default();
            let method = pg_sys::GetLockTagsMethodTable(addr_of!((*lock).tag));
            let modes = usize::try_from((*method).numLockModes)
                .unwrap_or(0)
                .min(MAX_LOCK_MODE);
            for m in 1..=modes {
                queue.conflicts[m] = *(*method).conflictTab.add(m) as u32;
            }
            for proclock in lock_holders(lock) {
                let hold = addr_of!((*proclock).holdMask).read_volatile();
                if hold == 0 {
                    continue;
                }
                let me = addr_of!((*proclock).tag.myProc).read_volatile();
                let group = group_of(addr_of!((*proclock).groupLeader).read_volatile());
                if addr_of!((*me).pid).read_volatile() == 0 {
                    prepared.push((
                        into.queues.len(),
                        queue.holders.len(),
                        addr_of!((*me).xid).read_volatile().into(),
                    ));
                }
                queue.holders.push(Holder {
                    group,
                    modes: hold as u32,
                });
            }
            for proc in lock_waiters(lock) {
                queue.waiters.push(Queued {
                    group: group_of(leader_of(proc)),
                    mode: u8::try_from(addr_of!((*proc).waitLockMode).read_volatile()).unwrap_or(0),
                });
            }
            into.queues.push(queue);
        }
    }
}

/// The PROCLOCKs of a lock (holders and waiters alike), in list order. 16 made the lists
/// dlists; 14 and 15 have SHM_QUEUEs.
///
/// # Safety
/// The lock's partition lock is held.
// SAFETY: an unsafe fn because of that contract.
unsafe fn lock_holders(lock: *mut pg_sys::LOCK) -> Vec<*mut pg_sys::PROCLOCK> {
    let offset = std::mem::offset_of!(pg_sys::PROCLOCK, lockLink);
    // SAFETY: the list head is in the LOCK; every element is a PROCLOCK's lockLink.
    unsafe {
        #[cfg(any(feature = "pg14", feature = "pg15"))]
        let head = addr_of_mut!((*lock).procLocks).cast::<pg_sys::SHM_QUEUE>();
        #[cfg(not(any(feature = "pg14", feature = "pg15")))]
        let head = addr_of_mut!((*lock).procLocks.head);
        list(head.cast(), offset)
    }
}

/// The PGPROCs waiting for a lock, in queue order.
///
/// # Safety
/// The lock's partition lock is held.
// SAFETY: an unsafe fn because of that contract.
unsafe fn lock_waiters(lock: *mut pg_sys::LOCK) -> Vec<*mut pg_sys::PGPROC> {
    let offset = std::mem::offset_of!(pg_sys::PGPROC, links);
    // SAFETY: the queue head is in the LOCK; every element is a PGPROC's links.
    unsafe {
        #[cfg(any(feature = "pg14", feature = "pg15"))]
        let head = addr_of_mut!((*lock).waitProcs.links);
        #[cfg(not(any(feature = "pg14", feature = "pg15")))]
        let head = addr_of_mut!((*lock).waitProcs.dlist.head);
        list(head.cast(), offset)
    }
}

/// The elements of a circular doubly-linked list whose nodes are `{prev, next}` (SHM_QUEUE and
/// dlist_node alike), each `offset` bytes into its element; an uninitialised head (next NULL)
/// is an empty list. Bounded by MaxBackends' worth of elements and more, so that a damaged list
/// cannot keep us here.
///
/// # Safety
/// `head` is a list head whose nodes the caller's locks protect.
// SAFETY: an unsafe fn because of that contract.
unsafe fn list<T>(head: *mut [*mut std::ffi::c_void; 2], offset: usize) -> Vec<*mut T> {
    let mut items = Vec::new();
    // SAFETY: as the caller promises; nodes are {prev, next}.
    unsafe {
        let bound = LIST_BOUND.load(Ordering::Relaxed);
        let mut node = (*head)[1].cast::<[*mut std::ffi::c_void; 2]>();
        while !node.is_null() && node != head && items.len() < bound {
            items.push(node.cast::<u8>().sub(offset).cast::<T>());
            node = (*node)[1].cast();
        }
    }
    items
}

/// ProcArrayLock, held in shared mode: while it is held no process can leave the proc array,
/// so a backend found there cannot exit and have its pid handed to another process.
/// Released on drop, or, when an ERROR unwinds past it, by the (sub)transaction abort.
///
/// Held only to copy or compare a few fields: nothing whose cost a caller chooses (a filter's
/// matching) runs under it.
pub struct ProcArrayPin {
    #[cfg(feature = "test-hooks")]
    since: std::time::Instant,
}

impl ProcArrayPin {
    pub fn acquire() -> ProcArrayPin {
        // SAFETY: MainLWLockArray is set up at server start; the lock is released on drop or
        // by LWLockReleaseAll at (sub)transaction abort. PostgreSQL's own signal functions
        // take it again in shared mode while we hold it (see `proc_array_lock`).
        unsafe { pg_sys::LWLockAcquire(proc_array_lock(), pg_sys::LWLockMode::LW_SHARED) };
        ProcArrayPin {
            #[cfg(feature = "test-hooks")]
            since: std::time::Instant::now(),
        }
    }

    /// Whether `slot` is a backend's (the first MaxBackends PGPROCs; auxiliary processes and
    /// prepared transactions have the ones after) and still has this pid: one load instead of a
    /// search of the proc array. Whether it is still in the array is for a check that needs it.
    pub fn backend_still_in_slot(&self, slot: *mut pg_sys::PGPROC, pid: i32) -> bool {
        // SAFETY: `slot` points into the PGPROC array, which never moves: the offset is from its
        // start, and the pid is one volatile load.
        unsafe {
            let index = slot.offset_from((*pg_sys::ProcGlobal).allProcs);
            (0..pg_sys::MaxBackends as isize).contains(&index)
                && addr_of!((*slot).pid).read_volatile() == pid
        }
    }

    /// The backend with this pid, if it is in the proc array.
    pub fn backend(&self, pid: i32) -> Option<*mut pg_sys::PGPROC> {
        // SAFETY: ProcArrayLock is held, as BackendPidGetProcWithLock requires.
        let proc = unsafe { pg_sys::BackendPidGetProcWithLock(pid) };
        (!proc.is_null()).then_some(proc)
    }

    /// The role the process runs as now (what pg_signal_backend will check).
    pub fn role_of(&self, proc: *mut pg_sys::PGPROC) -> pg_sys::Oid {
        // SAFETY: `proc` is in the proc array and pinned there; one volatile load.
        unsafe { addr_of!((*proc).roleId).read_volatile() }
    }

    /// Copies into `into` what `proc`'s entry of the live backend status array says now: its
    /// identity, and the activity a filter may match on, with the entry's change count (the
    /// query text only if `into` was made to hold it). Read with the status array's change-count
    /// protocol, spinning at most a few dozen microseconds (PostgreSQL's writers hold the odd
    /// count for a few instructions; a writer stopped half-way must not keep us here). Nothing
    /// is allocated here: `into`'s buffers were sized before the pin.
    pub fn live_state(&self, proc: *mut pg_sys::PGPROC, into: &mut LiveActivity) -> LiveState {
        const MAX_SPIN: std::time::Duration = std::time::Duration::from_micros(50);
        let Some(entry) = live_status_entry(proc) else {
            return LiveState::Starting;
        };
        let started = std::time::Instant::now();
        let query_room = into.query_room;
        loop {
            // The read protocol is pgstat_begin_read_activity / pgstat_end_read_activity's.
            // `entry` and its two string buffers (at least track_activity_query_size and
            // NAMEDATALEN bytes, of which no more than `into` has room for is read) are slots
            // of shared-memory arrays that never move.
            // SAFETY: as above; every field is read volatile between two reads of the change
            // count and used only if it was even and unchanged.
            unsafe {
                let before = addr_of!((*entry).st_changecount).read_volatile();
                fence(Ordering::Acquire);
                into.entry = entry;
                into.pid = addr_of!((*entry).st_procpid).read_volatile();
                into.backend_start = addr_of!((*entry).st_proc_start_timestamp).read_volatile();
                into.state = addr_of!((*entry).st_state).read_volatile();
                into.xact_start = addr_of!((*entry).st_xact_start_timestamp).read_volatile();
                into.query_start = addr_of!((*entry).st_activity_start_timestamp).read_volatile();
                into.state_change = addr_of!((*entry).st_state_start_timestamp).read_volatile();
                copy_c_string(
                    addr_of!((*entry).st_activity_raw).read_volatile(),
                    query_room,
                    &mut into.query,
                );
                copy_c_string(
                    addr_of!((*entry).st_appname).read_volatile(),
                    NAME_ROOM,
                    &mut into.application_name,
                );
                fence(Ordering::Acquire);
                let after = addr_of!((*entry).st_changecount).read_volatile();
                if before == after && before % 2 == 0 {
                    into.changecount = before;
                    into.wait_event_info = addr_of!((*proc).wait_event_info).read_volatile();
                    into.role = self.role_of(proc);
                    return LiveState::Known;
                }
            }
            if started.elapsed() > MAX_SPIN {
                return LiveState::Busy;
            }
            std::hint::spin_loop();
        }
    }

    /// Whether `proc`'s live entry, wait event and role are still what `seen` copied: the same
    /// status slot, still naming the same process, whose change count has not moved (every
    /// write to the entry moves it, an exit too), and the same wait event, which lives in
    /// PGPROC outside that count.
    pub fn unchanged_since(&self, proc: *mut pg_sys::PGPROC, seen: &LiveActivity) -> bool {
        let Some(entry) = live_status_entry(proc) else {
            return false;
        };
        if entry != seen.entry {
            return false;
        }
        // SAFETY: as in `live_state`: volatile loads of a status-array slot's fields, and of
        // two of `proc`'s own; `proc` is in the proc array and pinned there. The count is read
        // first and last: the identity read between is that of an unchanged entry.
        unsafe {
            let count = addr_of!((*entry).st_changecount).read_volatile();
            fence(Ordering::Acquire);
            let same_process = addr_of!((*entry).st_procpid).read_volatile() == seen.pid
                && addr_of!((*entry).st_proc_start_timestamp).read_volatile() == seen.backend_start;
            fence(Ordering::Acquire);
            count == seen.changecount
                && addr_of!((*entry).st_changecount).read_volatile() == count
                && same_process
                && addr_of!((*proc).wait_event_info).read_volatile() == seen.wait_event_info
                && self.role_of(proc) == seen.role
        }
    }
}

/// Copies the NUL-terminated string at `ptr` (at most `max` bytes) into `out`, cleared first,
/// eight bytes at a time where aligned. `out` holds at least `max` bytes: nothing is allocated.
///
/// # Safety
/// `ptr` is NULL or points to at least `max` readable bytes that may be written concurrently
/// (each is read volatile; the caller validates the whole with a change count).
// SAFETY: an unsafe fn because of that contract; `live_state` passes the status buffers.
unsafe fn copy_c_string(ptr: *const std::ffi::c_char, max: usize, out: &mut Vec<u8>) {
    out.clear();
    // Never more than the room made before the pin: nothing is allocated under it.
    let max = max.min(out.capacity());
    if ptr.is_null() {
        return;
    }
    let bytes = ptr.cast::<u8>();
    let mut i = 0;
    while i < max {
        // SAFETY: within the `max` bytes the caller promises; the word read is aligned.
        let word = unsafe { bytes.add(i) };
        if word.align_offset(8) == 0 && i + 8 <= max {
            // SAFETY: as above.
            let chunk = unsafe { word.cast::<u64>().read_volatile() }.to_ne_bytes();
            match chunk.iter().position(|&b| b == 0) {
                Some(end) => return out.extend_from_slice(&chunk[..end]),
                None => out.extend_from_slice(&chunk),
            }
            i += 8;
        } else {
            // SAFETY: as above.
            let byte = unsafe { word.read_volatile() };
            if byte == 0 {
                return;
            }
            out.push(byte);
            i += 1;
        }
    }
}

/// The application_name buffer of a status entry (NAMEDATALEN in every supported major).
const NAME_ROOM: usize = pg_sys::NAMEDATALEN as usize;

/// A live status entry's answer to "who are you, and what are you doing?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveState {
    /// Copied.
    Known,
    /// The process has no entry yet: it is still starting.
    Starting,
    /// The entry was being rewritten for as long as we were willing to spin.
    Busy,
}

/// What a pinned look copies of a process: the fields of its live status entry that identify
/// it and that a filter may match on, the entry's change count, its wait event and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveActivity {
    /// The status slot copied.
    entry: *const pg_sys::PgBackendStatus,
    /// 0 once the process is on its way out.
    pub pid: i32,
    pub backend_start: i64,
    pub state: pg_sys::BackendState::Type,
    pub xact_start: i64,
    pub query_start: i64,
    pub state_change: i64,
    /// The query text as stored (not yet clipped to a character boundary), if asked for.
    pub query: Vec<u8>,
    /// How much of the query text is copied: track_activity_query_size, or 0.
    query_room: usize,
    pub application_name: Vec<u8>,
    /// The entry's change count when it was copied (even).
    pub changecount: std::ffi::c_int,
    pub wait_event_info: u32,
    pub role: pg_sys::Oid,
}

impl LiveActivity {
    /// Room for a copy, allocated before any pin: the query text only if `with_query` (a
    /// filter that does not read it need not have it copied under the lock).
    pub fn with_room(with_query: bool) -> LiveActivity {
        let query_size =
            // SAFETY: a setting of this process, read once.
            usize::try_from(unsafe { pg_sys::pgstat_track_activity_query_size }).unwrap_or(0);
        LiveActivity {
            entry: std::ptr::null(),
            pid: 0,
            backend_start: 0,
            state: pg_sys::BackendState::STATE_UNDEFINED,
            xact_start: 0,
            query_start: 0,
            state_change: 0,
            query: Vec::with_capacity(if with_query { query_size } else { 0 }),
            query_room: if with_query { query_size } else { 0 },
            application_name: Vec::with_capacity(NAME_ROOM),
            changecount: 0,
            wait_event_info: 0,
            role: pg_sys::InvalidOid,
        }
    }
}

// How long the pin was held since the last look: the longest hold, the total, and how many
// holds, for the test that measures it (`pg_reaper.log_pin_hold`).
#[cfg(feature = "test-hooks")]
thread_local! {
    static PIN_HOLDS: std::cell::Cell<(std::time::Duration, std::time::Duration, u64)> =
        const { std::cell::Cell::new((std::time::Duration::ZERO, std::time::Duration::ZERO, 0)) };
}

/// The pin's holds since the last call: (longest, total, how many), for the test builds'
/// measurement.
#[cfg(feature = "test-hooks")]
pub fn take_pin_holds() -> (std::time::Duration, std::time::Duration, u64) {
    let zero = std::time::Duration::ZERO;
    PIN_HOLDS.with(|l| l.replace((zero, zero, 0)))
}

impl Drop for ProcArrayPin {
    fn drop(&mut self) {
        release_unless_error_unwinding(proc_array_lock());
        #[cfg(feature = "test-hooks")]
        PIN_HOLDS.with(|l| {
            let (longest, total, n) = l.get();
            let held = self.since.elapsed();
            l.set((longest.max(held), total + held, n + 1));
        });
    }
}

/// Releases an LWLock this code acquired, except while a PostgreSQL ERROR unwinds: elog.c
/// resets InterruptHoldoffCount to 0 before it jumps, so releasing then would take the count
/// below zero (the session would then ignore cancels and terminates until its next error);
/// the (sub)transaction abort releases it instead, as it does for C code.
pub fn release_unless_error_unwinding(lock: *mut pg_sys::LWLock) {
    // SAFETY: reads a backend-local counter; the lock was acquired by this backend, and a
    // positive count means no ERROR has reset the hold-off that acquiring it took.
    unsafe {
        if pg_sys::InterruptHoldoffCount > 0 {
            pg_sys::LWLockRelease(lock);
        }
    }
}

/// ProcArrayLock is entry 4 of the main LWLock array in every supported major
/// (lwlocknames.txt in 14..16, lwlocklist.h in 17 and 18); the C macro is not in the bindings.
///
/// Held twice: PostgreSQL's own signal functions, called under our pin, take it again in shared
/// mode (BackendPidGetProc), which PostgreSQL itself never does. It works in every supported
/// major, as read in lwlock.c of 15.18 and 18.6 (the same two functions since 9.5):
/// LWLockAttemptLock grants a shared request whenever no exclusive holder is recorded in the
/// lock's state, whoever holds it shared and whoever queues for it exclusively (no fairness, so
/// no waiting behind a queued exclusive request while we hold it); LWLockAcquire records each
/// acquisition in held_lwlocks (200 entries), and LWLockRelease removes the latest entry for
/// the lock and one shared count, so the two holds are released one at a time; an ERROR
/// releases both (LWLockReleaseAll).
pub fn proc_array_lock() -> *mut pg_sys::LWLock {
    const PROC_ARRAY_LOCK: usize = 4;
    // SAFETY: MainLWLockArray has far more than five entries and never moves.
    unsafe { addr_of_mut!((*pg_sys::MainLWLockArray.add(PROC_ARRAY_LOCK)).lock) }
}

/// The live status-array entry of a process in the proc array. The array itself is static in
/// backend_status.c; it is found from our own entry (MyBEEntry) and our own index in it.
fn live_status_entry(proc: *mut pg_sys::PGPROC) -> Option<*const pg_sys::PgBackendStatus> {
    let (mine, theirs) = status_indexes(proc)?;
    // SAFETY: MyBEEntry is this backend's entry (checked non-NULL), at index `mine` of the
    // status array, whose first MaxBackends entries belong to backends; `theirs` was checked
    // to be below that.
    unsafe {
        let me = pg_sys::MyBEEntry.cast_const();
        if me.is_null() {
            return None;
        }
        Some(me.sub(mine).add(theirs))
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
/// victim is pinned (ProcArrayLock held) those checks are catcache hits and touch no catalog: no
/// buffer I/O, no heavyweight lock, under a lightweight one. (Nothing between this and the pin
/// processes invalidation messages, so the entries stay.) The pinned check compares the
/// victim's live role with `target_role` and, if it changed, comes back here first.
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

/// The worker's pinned settings that only some majors have (see worker::PINNED_SETTINGS).
pub fn worker_settings() -> &'static [(&'static CStr, &'static CStr)] {
    // 17 added transaction_timeout, which StartTransaction arms in every process: a run's
    // grace period and exit wait must not be cut short by it.
    #[cfg(not(any(feature = "pg14", feature = "pg15", feature = "pg16")))]
    return &[(c"transaction_timeout", c"0")];
    #[cfg(any(feature = "pg14", feature = "pg15", feature = "pg16"))]
    return &[];
}

/// Runs `f` with an active snapshot: the caller's if it has one (a SQL call), else a fresh one
/// taken now and popped after (the background worker, which holds none between its reads).
pub fn with_snapshot<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: reads backend-local snapshot state.
    if unsafe { pg_sys::ActiveSnapshotSet() } {
        return f();
    }
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            // While an ERROR unwinds, the (sub)transaction's abort pops it.
            if !std::thread::panicking() {
                // SAFETY: pops the snapshot pushed below, in the same (sub)transaction.
                unsafe { pg_sys::PopActiveSnapshot() };
            }
        }
    }
    // SAFETY: in a transaction; popped by Pop, or by the abort.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    let _pop = Pop;
    f()
}

/// Lets go of the catalog snapshot, if no other snapshot is held (as PostgreSQL does between
/// statements), so that a backend that holds none keeps no xmin while it waits.
pub fn release_catalog_snapshot() {
    // SAFETY: drops a backend-local cached snapshot only when nothing else is registered.
    unsafe { pg_sys::InvalidateCatalogSnapshotConditionally() };
}

/// Whether the current role is a superuser (cached by PostgreSQL).
pub fn is_superuser() -> bool {
    // SAFETY: a catalog check on this session's own role.
    unsafe { pg_sys::superuser() }
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

/// pg_stat_activity's name for a backend state.
pub fn state_name(state: pg_sys::BackendState::Type) -> Option<&'static str> {
    use pg_sys::BackendState::*;
    match state {
        STATE_IDLE => Some("idle"),
        STATE_RUNNING => Some("active"),
        STATE_IDLEINTRANSACTION => Some("idle in transaction"),
        STATE_FASTPATH => Some("fastpath function call"),
        STATE_IDLEINTRANSACTION_ABORTED => Some("idle in transaction (aborted)"),
        STATE_DISABLED => Some("disabled"),
        // 18 shows a backend that is still authenticating, with no role yet.
        #[cfg(feature = "pg18")]
        STATE_STARTING => Some("starting"),
        _ => None,
    }
}

/// A wait event's type and name, as pg_stat_activity spells them.
pub fn wait_event_names(info: u32) -> (Option<String>, Option<String>) {
    let name = |p: *const std::ffi::c_char| {
        // SAFETY: the wait-event functions return static strings or NULL for any value.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    };
    // SAFETY: as above.
    unsafe {
        (
            name(pg_sys::pgstat_get_wait_event_type(info)),
            name(pg_sys::pgstat_get_wait_event(info)),
        )
    }
}

/// A query text as pg_stat_activity shows it: clipped to whole characters, as
/// pgstat_clip_activity does.
pub fn clip_activity(raw: &[u8]) -> Option<String> {
    let text = std::ffi::CString::new(raw).ok()?;
    // SAFETY: a NUL-terminated copy; the result is palloc'd, copied and freed.
    unsafe {
        let clipped = pg_sys::pgstat_clip_activity(text.as_ptr());
        if clipped.is_null() {
            return None;
        }
        let owned = CStr::from_ptr(clipped).to_string_lossy().into_owned();
        pg_sys::pfree(clipped.cast());
        Some(owned)
    }
}

/// Makes SIGTERM end this background worker as it ends a backend: `die` sets the flags that
/// the next CHECK_FOR_INTERRUPTS turns into a FATAL exit (code 1: the postmaster restarts it).
pub fn terminate_on_sigterm() {
    // SAFETY: installs PostgreSQL's own handler for this process.
    unsafe {
        // 18 renamed the backend's pqsignal to pqsignal_be.
        #[cfg(not(feature = "pg18"))]
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres::die));
        #[cfg(feature = "pg18")]
        pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(postgres::die));
    }
}

/// PostgreSQL's own functions, where a signal handler needs the C symbol itself (pgrx's
/// bindings wrap each function in Rust).
mod postgres {
    // SAFETY: the declaration matches tcop/postgres.c's `void die(SIGNAL_ARGS)` in every
    // supported major.
    unsafe extern "C-unwind" {
        /// tcop/postgres.c: the backends' SIGTERM handler.
        pub fn die(postgres_signal_arg: std::ffi::c_int);
    }
}

/// Sends this process's pending statistics to the cumulative statistics system; outside a
/// transaction, as a backend does between statements.
pub fn report_stats() {
    // SAFETY: called between transactions. (15 made it return how long until the next flush;
    // 14 returns nothing. Either way, nothing to do with it.)
    unsafe {
        #[allow(clippy::let_unit_value)]
        let _ = pg_sys::pgstat_report_stat(false);
    }
}

/// Why a background worker cannot connect to `database`, or None if it can: it does not
/// exist, refuses connections, or was left invalid by an interrupted DROP DATABASE. In a
/// transaction (syscache lookups on the shared catalog pg_database).
pub fn why_not_connectable(database: &CStr) -> Option<String> {
    /// datconnlimit of a database an interrupted DROP DATABASE left behind (back-patched to
    /// every supported major in 2023: 14.9, 15.4, 16.0).
    const DATCONNLIMIT_INVALID_DB: i32 = -2;
    // SAFETY: syscache lookups in a transaction; the tuple is read, then released.
    unsafe {
        let oid = pg_sys::get_database_oid(database.as_ptr(), true);
        if oid == pg_sys::InvalidOid {
            return Some("does not exist".into());
        }
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::DATABASEOID as i32,
            pg_sys::Datum::from(oid),
        );
        if tuple.is_null() {
            return Some("does not exist".into());
        }
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
        let (allow, limit) = ((*form).datallowconn, (*form).datconnlimit);
        pg_sys::ReleaseSysCache(tuple);
        if limit == DATCONNLIMIT_INVALID_DB {
            Some("is invalid (an interrupted DROP DATABASE left it): drop it".into())
        } else if !allow {
            Some("does not allow connections (datallowconn is false)".into())
        } else {
            None
        }
    }
}
