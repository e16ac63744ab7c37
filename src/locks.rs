//! The lock graph: who waits for whom, with `pg_blocking_pids`' own rules, from one consistent
//! look at the lock manager per snapshot, and only about the processes that wait for a lock.
//! Read only when a filter asks for lock keys.

use pgrx::pg_sys;

use std::collections::HashSet;
use std::rc::Rc;

use crate::compat::ProcsByPid;
use crate::filter::{ChainNeeds, LockChains, Session, Waiter};

/// Who blocks whom, and since when each waiter waits: the chains worked out by the filter's
/// own (pure) code, which `reaper.test_filter` shares. (Shared, not copied, when an escalation's
/// grace period reuses a recent look.)
#[derive(Debug, Clone)]
pub struct LockGraph {
    chains: Rc<LockChains>,
    /// When the lock manager was looked at.
    pub read_at: std::time::Instant,
}

impl LockGraph {
    /// Asks the lock manager about every lock group (or lone process) that waits for a lock,
    /// all under one hold of its partition locks, so that the answers are consistent with each
    /// other. No waiter, no question: a snapshot where nobody waits costs one pass over the
    /// PGPROCs and never touches the lock manager.
    pub fn read(procs: &ProcsByPid, needs: ChainNeeds) -> LockGraph {
        let read_at = std::time::Instant::now();
        if !procs.any_lock_waiter() {
            return LockGraph {
                chains: Rc::default(),
                read_at,
            };
        }
        let mut waiters = Vec::new();
        {
            let _look = LockManagerLook::hold();
            for (ask, members) in procs.lock_waiting_groups() {
                let blockers = blocking_pids(ask);
                if blockers.is_empty() {
                    continue;
                }
                // A lock group (a parallel query) waits since its first member began to wait.
                let wait_start = members
                    .iter()
                    .filter_map(|&m| procs.lock_wait_start(m))
                    .min();
                for member in members {
                    waiters.push(Waiter {
                        pid: member,
                        blocked_by: blockers.clone(),
                        wait_start,
                    });
                }
            }
        }
        // Worked out after the locks are released; a cancel can stop a long walk.
        let mut check = || {
            pgrx::check_for_interrupts!();
        };
        LockGraph {
            chains: Rc::new(LockChains::new(waiters, needs, &mut check)),
            read_at,
        }
    }

    /// Sets the session's lock facts.
    pub fn describe(&self, s: &mut Session) {
        s.locks = self.chains.facts(s.pid);
    }
}

/// ProcArrayLock and every lock-manager partition lock, held in shared mode, in the order
/// GetBlockerStatusData takes them: nobody can join or leave a lock queue while it is held, so
/// the answers about several waiters describe one moment.
struct LockManagerLook(());

impl LockManagerLook {
    fn hold() -> LockManagerLook {
        // SAFETY: the locks are set up at server start; released on drop, or by
        // LWLockReleaseAll at (sub)transaction abort.
        unsafe {
            pg_sys::LWLockAcquire(
                crate::compat::proc_array_lock(),
                pg_sys::LWLockMode::LW_SHARED,
            );
            for i in 0..pg_sys::NUM_LOCK_PARTITIONS as usize {
                pg_sys::LWLockAcquire(partition_lock(i), pg_sys::LWLockMode::LW_SHARED);
            }
        }
        LockManagerLook(())
    }
}

impl Drop for LockManagerLook {
    fn drop(&mut self) {
        // Released in reverse order; left to the abort while an ERROR unwinds.
        for i in (0..pg_sys::NUM_LOCK_PARTITIONS as usize).rev() {
            crate::compat::release_unless_error_unwinding(partition_lock(i));
        }
        crate::compat::release_unless_error_unwinding(crate::compat::proc_array_lock());
    }
}

/// LockHashPartitionLockByIndex(i): the C macro is not in the bindings.
fn partition_lock(i: usize) -> *mut pg_sys::LWLock {
    // SAFETY: the lock-manager partition locks sit at LOCK_MANAGER_LWLOCK_OFFSET in the main
    // LWLock array, NUM_LOCK_PARTITIONS of them; the array never moves.
    unsafe {
        let padded = pg_sys::MainLWLockArray.add(pg_sys::LOCK_MANAGER_LWLOCK_OFFSET as usize + i);
        std::ptr::addr_of_mut!((*padded).lock)
    }
}

/// pg_blocking_pids(pid), computed as lockfuncs.c computes it from GetBlockerStatusData: for
/// each member of the waiter's lock group, the holders of a conflicting mode (hard blocks) and
/// the processes ahead of it in the wait queue asking for a conflicting mode (soft blocks);
/// lock-group members never block each other; each blocker is named by its group leader.
fn blocking_pids(pid: i32) -> Vec<i32> {
    let mut blockers = Vec::new();
    // SAFETY: GetBlockerStatusData returns palloc'd arrays of the sizes it reports; they are
    // read within those bounds and freed here. The lock tags it copies are plain data.
    unsafe {
        let data = pg_sys::GetBlockerStatusData(pid);
        if data.is_null() {
            return blockers;
        }
        let d = &*data;
        let procs = slice((*data).procs, d.nprocs);
        let locks = slice(d.locks, d.nlocks);
        let waiter_pids = slice(d.waiter_pids, d.npids);
        for bproc in procs {
            let instances = sub(locks, bproc.first_lock, bproc.num_locks);
            // A set: asked once per lock instance, and a hot lock's queue can be long (this
            // runs with every lock-manager partition held).
            let ahead: HashSet<i32> = sub(waiter_pids, bproc.first_waiter, bproc.num_waiters)
                .iter()
                .copied()
                .collect();
            let Some(own) = instances.iter().position(|i| i.pid == bproc.pid) else {
                continue;
            };
            let blocked = &instances[own];
            let method = pg_sys::GetLockTagsMethodTable(&blocked.locktag);
            let conflicts = *(*method).conflictTab.add(blocked.waitLockMode as usize);
            for (j, other) in instances.iter().enumerate() {
                if j == own || other.leaderPid == blocked.leaderPid {
                    continue;
                }
                let hard = conflicts & other.holdMask != 0;
                let soft = other.waitLockMode != pg_sys::NoLock as i32
                    && conflicts & (1 << other.waitLockMode) != 0
                    && ahead.contains(&other.pid);
                if hard || soft {
                    blockers.push(other.leaderPid);
                }
            }
        }
        pg_sys::pfree(d.procs.cast());
        pg_sys::pfree(d.locks.cast());
        pg_sys::pfree(d.waiter_pids.cast());
        pg_sys::pfree(data.cast());
    }
    blockers.sort_unstable();
    blockers.dedup();
    blockers
}

/// # Safety
/// `ptr` points to at least `len` initialised items (or `len` is 0).
// SAFETY: an unsafe fn because of that contract; callers pass GetBlockerStatusData's arrays.
unsafe fn slice<'a, T>(ptr: *const T, len: i32) -> &'a [T] {
    match usize::try_from(len) {
        // SAFETY: as the caller promises.
        Ok(len) if len > 0 && !ptr.is_null() => unsafe { std::slice::from_raw_parts(ptr, len) },
        _ => &[],
    }
}

/// `items[first..first + len]`, empty where that range is not within `items`.
fn sub<T>(items: &[T], first: i32, len: i32) -> &[T] {
    let (Ok(first), Ok(len)) = (usize::try_from(first), usize::try_from(len)) else {
        return &[];
    };
    items.get(first..first.saturating_add(len)).unwrap_or(&[])
}
