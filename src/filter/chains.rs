//! Lock chains. From who waits for whom (`pg_blocking_pids`) and since when
//! (`pg_locks.waitstart`), what each session's lock keys read: whether it blocks or is blocked,
//! whether it heads a chain, how many sessions wait behind it directly or through a chain, and
//! since when the longest of them waits. The live path (from the lock manager) and
//! `reaper.test_filter` (from JSON) both build their facts here, so they cannot disagree.
//!
//! A cycle (a deadlock the detector has not broken yet, or a wait-queue cycle) has no head:
//! every member is blocked, so none is a root; each member blocks every other member (and not
//! itself), so the counting keys and `min_blocking_age` see the cycle like any chain.

use std::collections::{HashMap, HashSet, VecDeque};

/// One process that waits for a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    pub pid: i32,
    /// The processes it waits for (pg_blocking_pids; a prepared transaction is pid 0).
    pub blocked_by: Vec<i32>,
    /// When it began to wait (None for the moment between the start of a wait and its
    /// timestamp, as pg_locks.waitstart).
    pub wait_start: Option<i64>,
}

/// A session's place in the lock graph.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockFacts {
    /// The processes it waits for; empty when it waits for none.
    pub blocked_by: Vec<i32>,
    /// Since when it waits for a lock.
    pub wait_start: Option<i64>,
    /// Somebody waits for it.
    pub blocking: bool,
    /// How many processes wait behind it, directly or through a chain.
    pub blocked_sessions: u32,
    /// The earliest wait_start among those.
    pub longest_wait_behind: Option<i64>,
}

impl LockFacts {
    pub fn blocked(&self) -> bool {
        !self.blocked_by.is_empty()
    }

    /// The head of a chain: it blocks someone and waits for nobody.
    pub fn root(&self) -> bool {
        self.blocking && !self.blocked()
    }
}

/// The lock graph of one moment, with what waits behind each blocker worked out.
#[derive(Debug, Clone, Default)]
pub struct LockChains {
    waiters: HashMap<i32, Waiter>,
    /// For each process somebody waits for: how many wait behind it, and since when the
    /// longest of them waits.
    behind: HashMap<i32, (u32, Option<i64>)>,
}

impl LockChains {
    pub fn new(waiters: impl IntoIterator<Item = Waiter>) -> LockChains {
        let waiters: HashMap<i32, Waiter> = waiters
            .into_iter()
            .filter(|w| !w.blocked_by.is_empty())
            .map(|w| (w.pid, w))
            .collect();
        // Who waits directly for each blocker.
        let mut waited_for_by: HashMap<i32, Vec<i32>> = HashMap::new();
        for w in waiters.values() {
            for &b in &w.blocked_by {
                if b != w.pid {
                    waited_for_by.entry(b).or_default().push(w.pid);
                }
            }
        }
        // Everyone behind each blocker: a walk along the waits, each process once, so a
        // cycle ends the walk instead of looping.
        let mut behind = HashMap::with_capacity(waited_for_by.len());
        for &blocker in waited_for_by.keys() {
            let mut seen: HashSet<i32> = HashSet::from([blocker]);
            let mut queue: VecDeque<i32> = waited_for_by[&blocker].iter().copied().collect();
            let (mut count, mut longest) = (0u32, None::<i64>);
            while let Some(pid) = queue.pop_front() {
                if !seen.insert(pid) {
                    continue;
                }
                count += 1;
                if let Some(start) = waiters.get(&pid).and_then(|w| w.wait_start) {
                    longest = Some(longest.map_or(start, |l: i64| l.min(start)));
                }
                if let Some(next) = waited_for_by.get(&pid) {
                    queue.extend(next.iter().copied());
                }
            }
            behind.insert(blocker, (count, longest));
        }
        LockChains { waiters, behind }
    }

    /// `pid`'s place in the graph.
    pub fn facts(&self, pid: i32) -> LockFacts {
        let waiter = self.waiters.get(&pid);
        let (blocked_sessions, longest_wait_behind) =
            self.behind.get(&pid).copied().unwrap_or((0, None));
        LockFacts {
            blocked_by: waiter.map(|w| w.blocked_by.clone()).unwrap_or_default(),
            wait_start: waiter.and_then(|w| w.wait_start),
            blocking: blocked_sessions > 0,
            blocked_sessions,
            longest_wait_behind,
        }
    }
}
