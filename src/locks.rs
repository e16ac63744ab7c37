//! The lock graph: who waits for whom, with `pg_blocking_pids`' own rules, from one look at the
//! lock manager per snapshot. Read only when a filter asks for lock keys.
//!
//! The look holds every lock-manager partition lock (shared) only to copy, as PostgreSQL's own
//! GetLockStatusData does: the processes that wait, and each awaited lock's holders and wait
//! queue, once per lock however many wait for it. What that means (who blocks whom, the chains,
//! their counts and ages) is worked out after the locks are released, by the filter's own pure
//! code ([`LockChains`]), which the replay shares.

use pgrx::pg_sys;

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::compat::ProcsByPid;
use crate::filter::{ChainNeeds, LockChains, Session, Waits, MAX_LOCK_MODE};

/// Who blocks whom, and since when each waiter waits: the chains worked out by the filter's
/// own (pure) code. (Shared, not copied, when an escalation's grace period reuses a recent
/// look.)
#[derive(Debug, Clone)]
pub struct LockGraph {
    chains: Rc<LockChains>,
    /// When the lock manager was looked at.
    pub read_at: Instant,
    /// The prepared transactions that hold a lock someone waits for in a conflicting mode:
    /// sessions may wait behind them, which no filter can select (they have no backend).
    prepared: Vec<u32>,
}

impl LockGraph {
    /// Looks at the lock manager, if anyone waits: a snapshot where nobody waits costs one
    /// pass over the PGPROCs and never touches it.
    pub fn read(procs: &ProcsByPid, needs: ChainNeeds) -> LockGraph {
        let read_at = Instant::now();
        let mut waits = Waits::default();
        let mut prepared = Vec::new();
        if procs.any_lock_waiter() {
            // Room made before the locks are taken (at most one entry per PGPROC each).
            // SAFETY: ProcGlobal is set up at server start; allProcCount never changes.
            let n = unsafe { (*pg_sys::ProcGlobal).allProcCount } as usize;
            waits.waiting.reserve(n);
            waits.queues.reserve(n);
            crate::compat::set_lock_list_bound();
            let look = LockManagerLook::hold();
            // SAFETY: every partition lock is held, as copy_lock_waits requires.
            unsafe { crate::compat::copy_lock_waits(&mut waits, &mut prepared) };
            let held = look.release();
            pgrx::debug1!(
                "pg_reaper: the look at the lock manager held its partition locks {} us ({} waiting, {} locks)",
                held.as_micros(),
                waits.waiting.len(),
                waits.queues.len()
            );
        }
        // A prepared transaction blocks if it holds a mode someone in its queue asks against.
        let blocking: Vec<u32> = prepared
            .iter()
            .filter(|(q, h, _)| {
                let queue = &waits.queues[*q];
                let modes = queue.holders[*h].modes;
                queue
                    .waiters
                    .iter()
                    .any(|w| queue.conflicts[usize::from(w.mode).min(MAX_LOCK_MODE)] & modes != 0)
            })
            .map(|(_, _, xid)| *xid)
            .collect();
        // Worked out after the locks are released; a cancel can stop a long walk.
        let mut check = || {
            pgrx::check_for_interrupts!();
        };
        LockGraph {
            chains: Rc::new(LockChains::new(waits, needs, &mut check)),
            read_at,
            prepared: blocking,
        }
    }

    /// The global transaction ids of the prepared transactions sessions wait behind, quoted,
    /// in order (read from pg_prepared_xacts; empty when none).
    pub fn prepared_gids(&self) -> Vec<String> {
        if self.prepared.is_empty() {
            return Vec::new();
        }
        let xids: Vec<String> = self.prepared.iter().map(u32::to_string).collect();
        let read = crate::compat::with_snapshot(|| {
            pgrx::Spi::get_one_with_args::<Vec<String>>(
                "SELECT pg_catalog.array_agg(pg_catalog.quote_literal(p.gid) ORDER BY p.gid) \
                   FROM pg_catalog.pg_prepared_xacts p \
                  WHERE p.transaction::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1)",
                &[xids.into()],
            )
        });
        read.ok().flatten().unwrap_or_default()
    }

    /// The chains worked out on this look.
    pub fn chains(&self) -> &LockChains {
        &self.chains
    }

    /// Sets the session's lock facts.
    pub fn describe(&self, s: &mut Session) {
        s.locks = self.chains.facts(s.pid);
    }
}

/// Every lock-manager partition lock, held in shared mode, in index order (as
/// GetLockStatusData takes them): nobody can join or leave a lock queue while it is held, so
/// what is copied describes one moment.
struct LockManagerLook {
    since: Instant,
}

impl LockManagerLook {
    fn hold() -> LockManagerLook {
        // SAFETY: the locks are set up at server start; released by `release`, on drop, or by
        // LWLockReleaseAll at (sub)transaction abort.
        unsafe {
            for i in 0..pg_sys::NUM_LOCK_PARTITIONS as usize {
                pg_sys::LWLockAcquire(partition_lock(i), pg_sys::LWLockMode::LW_SHARED);
            }
        }
        LockManagerLook {
            since: Instant::now(),
        }
    }

    /// Lets go, and says for how long it held the locks.
    fn release(self) -> Duration {
        let held = self.since.elapsed();
        drop(self);
        held
    }
}

impl Drop for LockManagerLook {
    fn drop(&mut self) {
        // Released in reverse order; left to the abort while an ERROR unwinds.
        for i in (0..pg_sys::NUM_LOCK_PARTITIONS as usize).rev() {
            crate::compat::release_unless_error_unwinding(partition_lock(i));
        }
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
