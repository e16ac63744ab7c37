//! The circuit breaker: a policy may send at most `max_signals_per_minute` signals over a
//! sliding 60-second window (every signal counts: an escalation's cancel and terminate are
//! two). A run that reaches the cap signals no more, and the policy is tripped until the window
//! allows again or `reaper.reset_policy(name)` resets it. Direct calls are not capped.
//!
//! The window is kept in shared memory, one entry per policy (its database and name), so that the worker and every
//! session running policies count together: sixty one-second buckets, the window being the
//! buckets of the last sixty seconds. Without the preload there is no shared memory: the cap
//! then applies within each run.

use std::cell::Cell;
use std::hash::{Hash, Hasher};

use pgrx::lwlock::PgLwLock;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;

/// The length of the window, in buckets of one second.
const WINDOW_SECONDS: usize = 60;

/// Policies whose windows are kept (the least recently used entry is reused past that).
const MAX_ENTRIES: usize = 512;

#[derive(Clone, Copy)]
struct Entry {
    /// A hash of the policy's name; 0: free.
    key: u64,
    /// The second (since 2000) each bucket counts, and its count.
    second: [i64; WINDOW_SECONDS],
    count: [u32; WINDOW_SECONDS],
    /// Tripped: the cap was reached and said so (once); cleared when the window allows again.
    tripped: bool,
    /// The last second the entry was used (for reuse).
    used: i64,
}

impl Entry {
    const EMPTY: Entry = Entry {
        key: 0,
        second: [0; WINDOW_SECONDS],
        count: [0; WINDOW_SECONDS],
        tripped: false,
        used: 0,
    };

    /// Whether bucket `i` is in the window that ends at `now` (a bucket of a later second, left
    /// before the clock was set back, is not: it must not hold the policy tripped).
    fn counts_at(&self, i: usize, now: i64) -> bool {
        self.second[i] <= now && now - self.second[i] < WINDOW_SECONDS as i64
    }

    /// Signals counted in the window that ends at `now`.
    fn in_window(&self, now: i64) -> u64 {
        (0..WINDOW_SECONDS)
            .filter(|&i| self.counts_at(i, now))
            .map(|i| u64::from(self.count[i]))
            .sum()
    }

    /// The first second at which the window holds fewer than `cap` signals again.
    fn allows_again_at(&self, now: i64, cap: u64) -> i64 {
        let mut buckets: Vec<(i64, u64)> = (0..WINDOW_SECONDS)
            .filter(|&i| self.counts_at(i, now) && self.count[i] > 0)
            .map(|i| (self.second[i], u64::from(self.count[i])))
            .collect();
        buckets.sort_unstable();
        let mut left = self.in_window(now);
        for (second, n) in buckets {
            if left < cap {
                break;
            }
            left -= n;
            if left < cap {
                return second + WINDOW_SECONDS as i64;
            }
        }
        now
    }

    fn add(&mut self, now: i64, n: i32) {
        let i = now.rem_euclid(WINDOW_SECONDS as i64) as usize;
        if self.second[i] != now {
            if n < 0 {
                return;
            }
            self.second[i] = now;
            self.count[i] = 0;
        }
        self.count[i] = self.count[i].saturating_add_signed(n);
    }
}

pub struct Breakers {
    entries: [Entry; MAX_ENTRIES],
}

impl Breakers {
    pub const fn new() -> Breakers {
        Breakers {
            entries: [Entry::EMPTY; MAX_ENTRIES],
        }
    }

    fn find(&self, key: u64) -> Option<usize> {
        self.entries.iter().position(|e| e.key == key)
    }

    /// The entry for `key`, made if missing: in a free entry, else in the least recently used
    /// one that is not tripped (reusing a tripped one would lift its cap), else in the least
    /// recently used one.
    fn entry(&mut self, key: u64, now: i64) -> &mut Entry {
        let i = self.find(key).unwrap_or_else(|| {
            let i = (0..MAX_ENTRIES)
                .min_by_key(|&i| {
                    let e = &self.entries[i];
                    // Tripped and still full: its flag alone may be stale (a policy deleted
                    // or given a higher cap keeps it).
                    (e.key != 0, e.tripped && e.in_window(now) > 0, e.used)
                })
                .unwrap_or(0);
            self.entries[i] = Entry {
                key,
                ..Entry::EMPTY
            };
            i
        });
        let e = &mut self.entries[i];
        e.used = now;
        e
    }
}

impl Default for Breakers {
    fn default() -> Breakers {
        Breakers::new()
    }
}

// SAFETY: fixed-size plain data (integers, booleans); no pointer.
unsafe impl PGRXSharedMemory for Breakers {}

// SAFETY: the name is unique to pg_reaper; set up by pg_shmem_init! in `register`, from
// _PG_init, when the library is preloaded.
static BREAKERS: PgLwLock<Breakers> = unsafe { PgLwLock::new(c"pg_reaper_breakers") };

/// Asks for the shared memory; from _PG_init while the postmaster loads the library.
pub fn register() {
    pgrx::pg_shmem_init!(BREAKERS = Breakers::new());
}

/// A policy's key: its database's and its name's hash (each database has its own policies).
fn key(policy: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    // SAFETY: this backend's own database, set once it connected.
    u32::from(unsafe { pgrx::pg_sys::MyDatabaseId }).hash(&mut h);
    policy.hash(&mut h);
    // 0 marks a free entry.
    h.finish().max(1)
}

fn now_second() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pgrx::pg_sys::GetCurrentTimestamp() }.div_euclid(1_000_000)
}

fn shared() -> bool {
    crate::guc::preloaded()
}

/// One run's breaker: the policy, its cap, and what the run met.
pub struct Breaker {
    pub policy: String,
    key: u64,
    pub cap: u32,
    /// Signals counted by this run (the whole count without shared memory).
    counted: Cell<u32>,
    /// The second the last allowed signal was counted in (given back there if unused).
    counted_at: Cell<i64>,
    /// Victims the run left unsignalled because of the cap.
    left: Cell<usize>,
    /// Whether this run tripped the policy (it was not tripped before).
    tripped_now: Cell<bool>,
}

impl Breaker {
    /// The breaker of a run of `policy` capped at `cap` signals a minute; None: not capped.
    pub fn new(policy: &str, cap: u32) -> Option<Breaker> {
        (cap > 0).then(|| Breaker {
            policy: policy.to_string(),
            key: key(policy),
            cap,
            counted: Cell::new(0),
            counted_at: Cell::new(0),
            left: Cell::new(0),
            tripped_now: Cell::new(false),
        })
    }

    /// Whether one more signal may be sent; if so, it is counted (give it back with `unused`
    /// if it was not sent). The first refusal trips the policy.
    pub fn allow(&self) -> bool {
        // Once refused, the run signals no more, even if the window moved on meanwhile.
        if self.left.get() > 0 {
            self.left.set(self.left.get() + 1);
            return false;
        }
        let cap = u64::from(self.cap);
        let allowed = if shared() {
            let now = now_second();
            let mut b = BREAKERS.exclusive();
            let e = b.entry(self.key, now);
            let n = e.in_window(now);
            if n < cap {
                e.tripped = false;
                e.add(now, 1);
                self.counted_at.set(now);
                true
            } else {
                if !e.tripped {
                    e.tripped = true;
                    self.tripped_now.set(true);
                }
                false
            }
        } else if u64::from(self.counted.get()) < cap {
            true
        } else {
            self.tripped_now.set(true);
            false
        };
        if allowed {
            self.counted.set(self.counted.get() + 1);
        } else {
            self.left.set(self.left.get() + 1);
        }
        allowed
    }

    /// Gives back a signal `allow` counted that was not sent after all.
    pub fn unused(&self) {
        self.counted.set(self.counted.get().saturating_sub(1));
        if shared() {
            // In the bucket it was counted in, which may be a second ago by now.
            let second = self.counted_at.get();
            let mut b = BREAKERS.exclusive();
            if let Some(i) = b.find(self.key) {
                b.entries[i].add(second, -1);
            }
        }
    }

    pub fn left(&self) -> usize {
        self.left.get()
    }

    pub fn tripped_now(&self) -> bool {
        self.tripped_now.get()
    }

    /// When the window allows this policy to signal again (microseconds since 2000).
    pub fn resumes_at(&self) -> Option<i64> {
        self.handle().tripped_until()
    }

    pub fn handle(&self) -> Handle {
        Handle {
            key: self.key,
            cap: self.cap,
        }
    }
}

/// A policy's breaker as plain data, for the worker's status in shared memory.
#[derive(Clone, Copy, Debug)]
pub struct Handle {
    key: u64,
    cap: u32,
}

impl Handle {
    /// Until when the policy is tripped, if it is (microseconds since 2000).
    pub fn tripped_until(self) -> Option<i64> {
        if !shared() || self.cap == 0 {
            return None;
        }
        let now = now_second();
        // A copy, worked out after the lock is released.
        let e = {
            let b = BREAKERS.share();
            b.entries[b.find(self.key)?]
        };
        let cap = u64::from(self.cap);
        (e.tripped && e.in_window(now) >= cap).then(|| e.allows_again_at(now, cap) * 1_000_000)
    }
}

/// Forgets `policy`'s window: it may signal again at once. Whether it was tripped.
pub fn reset(policy: &str) -> bool {
    if !shared() {
        return false;
    }
    let mut b = BREAKERS.exclusive();
    let Some(i) = b.find(key(policy)) else {
        return false;
    };
    let was = b.entries[i].tripped;
    b.entries[i] = Entry::EMPTY;
    was
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_slides_by_the_second() {
        let mut e = Entry::EMPTY;
        for s in 0..10 {
            e.add(1000 + s, 10);
        }
        assert_eq!(e.in_window(1009), 100);
        // At 1060 the first second has left the window.
        assert_eq!(e.in_window(1060), 90);
        assert_eq!(e.in_window(1069), 0);
        // With a cap of 95, one second must leave (1000's, at 1060); with 85, two (at 1061).
        assert_eq!(e.allows_again_at(1009, 95), 1060);
        assert_eq!(e.allows_again_at(1009, 85), 1061);
        assert_eq!(e.allows_again_at(1009, 101), 1009);
    }

    #[test]
    fn a_bucket_of_an_old_second_is_reused() {
        let mut e = Entry::EMPTY;
        e.add(5, 3);
        e.add(65, 2);
        assert_eq!(e.in_window(65), 2);
        // Giving back a signal of a bucket that moved on changes nothing.
        e.add(125, -1);
        assert_eq!(e.in_window(125), 0);
    }

    #[test]
    fn a_bucket_from_after_a_clock_step_back_does_not_count() {
        let mut e = Entry::EMPTY;
        e.add(2000, 50);
        assert_eq!(e.in_window(1990), 0);
        assert_eq!(e.allows_again_at(1990, 10), 1990);
    }

    #[test]
    fn a_signal_is_given_back_in_the_second_it_was_counted_in() {
        let mut e = Entry::EMPTY;
        e.add(100, 1);
        e.add(101, 1);
        e.add(100, -1);
        assert_eq!(e.in_window(101), 1);
        assert_eq!(e.count[(101 % 60) as usize], 1);
    }

    #[test]
    fn a_tripped_entry_is_reused_last() {
        let mut b = Breakers::new();
        for k in 1..=MAX_ENTRIES as u64 {
            b.entry(k, k as i64).add(k as i64, 1);
        }
        b.entries[0].tripped = true;
        b.entry(MAX_ENTRIES as u64 + 1, 10);
        assert!(b.find(1).is_some(), "the tripped entry was reused");
        assert!(b.find(2).is_none());
    }

    #[test]
    fn entries_are_reused_least_recently_used_first() {
        let mut b = Breakers::new();
        for k in 1..=MAX_ENTRIES as u64 {
            b.entry(k, k as i64).add(k as i64, 1);
        }
        b.entry(MAX_ENTRIES as u64 + 1, 10_000);
        assert!(b.find(1).is_none());
        assert!(b.find(2).is_some());
    }
}
