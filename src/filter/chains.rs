//! Lock chains. From who waits for whom (`pg_blocking_pids`) and since when
//! (`pg_locks.waitstart`), what each session's lock keys read: whether it blocks or is blocked,
//! whether it heads a chain, how many sessions wait behind it directly or through a chain, and
//! since when the longest of them waits. The live path (from the lock manager) and
//! `reaper.test_filter` (from JSON) both build their facts here, so they cannot disagree.
//!
//! A cycle (a deadlock the detector has not broken yet, or a wait-queue cycle) has no head:
//! every member is blocked, so none is a root; each member holds up every other member (and not
//! itself), so the counting keys and `min_blocking_age` see the cycle like any chain.
//!
//! Only what a filter asks for is worked out ([`ChainNeeds`]), in time linear in the number of
//! waits for `min_blocking_age`, and at most `cap` sessions deep per blocker for
//! `min_blocked_sessions`; `check` is called every few thousand steps, so that a cancel can
//! stop a large replay.

use std::collections::{HashMap, HashSet};

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

/// What the chains must tell, beyond who blocks and who is blocked (always known).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChainNeeds {
    /// `min_blocked_sessions`: count the sessions behind each blocker, up to this many.
    pub count_up_to: Option<u32>,
    /// `min_blocking_age`: the earliest wait start behind each blocker.
    pub longest_wait_behind: bool,
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
    /// How many processes wait behind it, directly or through a chain (counted up to the
    /// filter's `min_blocked_sessions`, and only when it has one).
    pub blocked_sessions: u32,
    /// The earliest wait_start among those (only when the filter has `min_blocking_age`).
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

/// The lock graph of one moment, with what the filter needs worked out.
#[derive(Debug, Clone, Default)]
pub struct LockChains {
    waiters: HashMap<i32, Waiter>,
    /// Who waits directly for each blocker.
    waited_for_by: HashMap<i32, Vec<i32>>,
    counts: HashMap<i32, u32>,
    longest: HashMap<i32, i64>,
}

/// How many steps between two calls of `check`.
const CHECK_EVERY: u64 = 4096;

impl LockChains {
    pub fn new(
        waiters: impl IntoIterator<Item = Waiter>,
        needs: ChainNeeds,
        check: &mut dyn FnMut(),
    ) -> LockChains {
        let mut steps = 0u64;
        let mut step = |check: &mut dyn FnMut()| {
            steps += 1;
            if steps.is_multiple_of(CHECK_EVERY) {
                check();
            }
        };
        let waiters: HashMap<i32, Waiter> = waiters
            .into_iter()
            .filter_map(|mut w| {
                let pid = w.pid;
                w.blocked_by.retain(|&b| b != pid);
                w.blocked_by.sort_unstable();
                w.blocked_by.dedup();
                (!w.blocked_by.is_empty()).then_some((w.pid, w))
            })
            .collect();
        let mut waited_for_by: HashMap<i32, Vec<i32>> = HashMap::new();
        for w in waiters.values() {
            for &b in &w.blocked_by {
                step(check);
                waited_for_by.entry(b).or_default().push(w.pid);
            }
        }
        let mut chains = LockChains {
            waiters,
            waited_for_by,
            counts: HashMap::new(),
            longest: HashMap::new(),
        };
        if let Some(cap) = needs.count_up_to {
            chains.count_behind(cap, &mut step, check);
        }
        if needs.longest_wait_behind {
            chains.longest_wait_behind(&mut step, check);
        }
        chains
    }

    /// For each blocker, the sessions behind it, counted up to `cap`: a walk along the waits
    /// that stops at `cap` (each process once, so a cycle ends it). The blockers are walked
    /// those behind first, so that a walk that reaches one already at `cap` stops there (all
    /// that is behind it is behind the walker too, and it is one more).
    fn count_behind(
        &mut self,
        cap: u32,
        step: &mut dyn FnMut(&mut dyn FnMut()),
        check: &mut dyn FnMut(),
    ) {
        let (nodes, edges) = self.graph();
        let component = tarjan(&edges, step, check);
        let mut blockers: Vec<(usize, i32)> = nodes
            .iter()
            .enumerate()
            .filter(|(_, p)| self.waited_for_by.contains_key(p))
            .map(|(i, &p)| (component[i], p))
            .collect();
        blockers.sort_unstable();
        let mut counts: HashMap<i32, u32> = HashMap::with_capacity(blockers.len());
        for (_, blocker) in blockers {
            let mut seen: HashSet<i32> = HashSet::from([blocker]);
            let mut stack: Vec<i32> = self.waited_for_by[&blocker].clone();
            let mut count = 0u32;
            while let Some(pid) = stack.pop() {
                step(check);
                if !seen.insert(pid) {
                    continue;
                }
                count += 1;
                if count >= cap || counts.get(&pid).is_some_and(|&c| c >= cap) {
                    count = cap.max(count);
                    break;
                }
                if let Some(next) = self.waited_for_by.get(&pid) {
                    stack.extend(next.iter().copied().filter(|p| !seen.contains(p)));
                }
            }
            counts.insert(blocker, count);
        }
        self.counts = counts;
    }

    /// For each blocker, the earliest wait start behind it, in time linear in the waits: the
    /// strongly connected components of the waits-for graph (Tarjan's algorithm, iteratively),
    /// then one pass over them in dependency order. Within a cycle every member is behind
    /// every other, but not behind itself.
    fn longest_wait_behind(
        &mut self,
        step: &mut dyn FnMut(&mut dyn FnMut()),
        check: &mut dyn FnMut(),
    ) {
        let (nodes, edges) = self.graph();
        let start = |i: usize| self.waiters.get(&nodes[i]).and_then(|w| w.wait_start);
        let component = tarjan(&edges, step, check);
        // Components come out of Tarjan's algorithm in reverse topological order (a component
        // after every component it reaches), so each is done after all it leads to.
        let count = component.iter().copied().max().map_or(0, |c| c + 1);
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); count];
        for (i, &c) in component.iter().enumerate() {
            members[c].push(i);
        }
        // Per component: the earliest start behind it from outside it, and its members' two
        // earliest starts (a member of a cycle is behind the others, not itself).
        let mut outside: Vec<Option<i64>> = vec![None; count];
        let mut earliest_in: Vec<Option<i64>> = vec![None; count];
        let min = |a: Option<i64>, b: Option<i64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, None) => x,
            (None, y) => y,
        };
        for c in 0..count {
            let mut from_outside = None;
            for &i in &members[c] {
                for &w in &edges[i] {
                    step(check);
                    let d = component[w];
                    if d != c {
                        from_outside =
                            min(from_outside, min(start(w), min(outside[d], earliest_in[d])));
                    }
                }
            }
            outside[c] = from_outside;
            // The two earliest starts of the members, and whose the earliest is: the earliest
            // start among a member's others is the first, or the second for its owner.
            let (mut first, mut first_of, mut second) = (None::<i64>, usize::MAX, None::<i64>);
            for &i in &members[c] {
                step(check);
                if let Some(t) = start(i) {
                    if first.is_none_or(|f| t < f) {
                        second = first;
                        (first, first_of) = (Some(t), i);
                    } else if second.is_none_or(|s| t < s) {
                        second = Some(t);
                    }
                }
            }
            earliest_in[c] = first;
            let cyclic = members[c].len() > 1;
            for &i in &members[c] {
                step(check);
                let mut behind = from_outside;
                if cyclic {
                    behind = min(behind, if i == first_of { second } else { first });
                }
                if let Some(t) = behind {
                    if self.waited_for_by.contains_key(&nodes[i]) {
                        self.longest.insert(nodes[i], t);
                    }
                }
            }
        }
    }

    /// The waits-for graph by index. Nodes: every pid that blocks or waits, in pid order.
    /// Edges: blocker -> each direct waiter.
    fn graph(&self) -> (Vec<i32>, Vec<Vec<usize>>) {
        let mut nodes: Vec<i32> = self
            .waited_for_by
            .keys()
            .chain(self.waiters.keys())
            .copied()
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        let index: HashMap<i32, usize> = nodes.iter().enumerate().map(|(i, &p)| (p, i)).collect();
        let edges = nodes
            .iter()
            .map(|p| {
                self.waited_for_by
                    .get(p)
                    .map(|ws| ws.iter().map(|w| index[w]).collect())
                    .unwrap_or_default()
            })
            .collect();
        (nodes, edges)
    }

    /// `pid`'s place in the graph.
    pub fn facts(&self, pid: i32) -> LockFacts {
        let waiter = self.waiters.get(&pid);
        LockFacts {
            blocked_by: waiter.map(|w| w.blocked_by.clone()).unwrap_or_default(),
            wait_start: waiter.and_then(|w| w.wait_start),
            blocking: self.waited_for_by.contains_key(&pid),
            blocked_sessions: self.counts.get(&pid).copied().unwrap_or(0),
            longest_wait_behind: self.longest.get(&pid).copied(),
        }
    }
}

/// The strongly connected component of each node, numbered in the order Tarjan's algorithm
/// finishes them (reverse topological order); iterative, so a long chain cannot overflow the
/// stack.
fn tarjan(
    edges: &[Vec<usize>],
    step: &mut dyn FnMut(&mut dyn FnMut()),
    check: &mut dyn FnMut(),
) -> Vec<usize> {
    const UNSEEN: usize = usize::MAX;
    let n = edges.len();
    let (mut order, mut low, mut component) = (vec![UNSEEN; n], vec![0; n], vec![UNSEEN; n]);
    let mut on_stack = vec![false; n];
    let (mut stack, mut next_order, mut next_component) = (Vec::new(), 0, 0);
    for root in 0..n {
        if order[root] != UNSEEN {
            continue;
        }
        // (node, index of the next edge to follow)
        let mut work: Vec<(usize, usize)> = vec![(root, 0)];
        while let Some(&mut (v, ref mut e)) = work.last_mut() {
            step(check);
            if *e == 0 && order[v] == UNSEEN {
                order[v] = next_order;
                low[v] = next_order;
                next_order += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&w) = edges[v].get(*e) {
                *e += 1;
                if order[w] == UNSEEN {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(order[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == order[v] {
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component[w] = next_component;
                    if w == v {
                        break;
                    }
                }
                next_component += 1;
            }
        }
    }
    component
}
