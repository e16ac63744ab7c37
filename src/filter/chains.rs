//! Lock chains. From who waits for whom and since when, what each session's lock keys read:
//! whether it blocks or is blocked, whether it heads a chain, how many sessions wait behind it
//! directly or through a chain, and since when the longest of them waits. The live path (from
//! the lock manager's own queues) and `reaper.test_filter` (from `pg_blocking_pids` lists) both
//! build their facts here, so they cannot disagree.
//!
//! "Waits for" means what `pg_blocking_pids` means: a process waits for the holders of a lock
//! mode that conflicts with the one it asks for, and for the processes ahead of it in the lock's
//! queue that ask for a conflicting mode; never for a member of its own lock group (a parallel
//! query's leader and workers, one node here, named by the leader's pid). Prepared transactions
//! hold locks with no process: they are all node 0, as `pg_blocking_pids` names them.
//!
//! A queue of K waiters that all conflict with each other has K² such pairs; the chains never
//! list them. Each queue becomes a compact graph with the same reachability: per lock mode, a
//! virtual node for "the holders in a mode that conflicts with it", and, along the queue, a
//! virtual node per waiter for "everyone behind it that conflicts with its mode", chained to the
//! next waiter's of the same mode. Its size is linear in the queue (at most a few nodes and
//! edges per mode per waiter).
//!
//! Who blocks and who is blocked (and so the roots) are read off the queues directly. The
//! counts behind each blocker and the earliest wait behind it are worked out on the compact
//! graph: its strongly connected components (a cycle: a deadlock the detector has not broken
//! yet), then one pass over them in dependency order: the earliest wait by a minimum, the counts
//! by unions of bit sets over the real nodes (a blocker whose count reaches the filter's
//! threshold stops its set there). A cycle has no head: every member is blocked, so none is a
//! root; each member holds up every other member (and not itself).
//!
//! Only what a filter asks for is worked out ([`ChainNeeds`]); `check` is called every few
//! thousand steps, so that a cancel can stop a large replay.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

/// The highest lock mode PostgreSQL has (MAX_LOCKMODES - 1 in every supported major).
pub const MAX_LOCK_MODE: usize = 9;

/// One lock that processes wait for, as the lock manager has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockQueue {
    /// For each lock mode (index), the modes it conflicts with, a bit each (`1 << mode`): the
    /// lock method's conflict table.
    pub conflicts: [u32; MAX_LOCK_MODE + 1],
    /// Who holds it, and in which modes (a bit each).
    pub holders: Vec<Holder>,
    /// Who waits for it, and for which mode, in queue order.
    pub waiters: Vec<Queued>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// The holder's lock group (its leader's pid, or its own; for a process without a pid, a
    /// prepared transaction, 0 in a capture and a number below 0, its own, live).
    pub group: i32,
    pub modes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    /// The waiter's lock group (its leader's pid, or its own).
    pub group: i32,
    pub mode: u8,
}

/// One process that waits for a lock (or belongs to a lock group that does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitingProcess {
    pub pid: i32,
    /// Its lock group (its leader's pid, or its own).
    pub group: i32,
    /// When it began to wait (None for the moment between the start of a wait and its
    /// timestamp, as pg_locks.waitstart, or for a member that does not wait itself).
    pub wait_start: Option<i64>,
}

/// Who waits for whom, in either form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Waits {
    /// Every process that waits, or belongs to a lock group that waits: each counts as a
    /// session behind its blockers.
    pub waiting: Vec<WaitingProcess>,
    /// The lock manager's queues (the live path).
    pub queues: Vec<LockQueue>,
    /// `pg_blocking_pids` lists: a lock group and the groups it waits for (a replay).
    pub lists: Vec<(i32, Vec<i32>)>,
}

/// What the chains must tell, beyond who blocks and who is blocked (always known).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChainNeeds {
    /// `min_blocked_sessions`: count the sessions behind each blocker, up to this many.
    pub count_up_to: Option<u32>,
    /// `min_blocking_age`: the earliest wait start behind each blocker.
    pub longest_wait_behind: bool,
    /// `holding_up`: who holds up given sessions (the graph is kept for it).
    pub holding_up: bool,
}

/// A session's place in the lock graph.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockFacts {
    /// It waits for someone.
    pub blocked: bool,
    /// Since when it waits for a lock (for a lock group: since its first member began to).
    pub wait_start: Option<i64>,
    /// Somebody waits for it.
    pub blocking: bool,
    /// How many processes wait behind it, directly or through a chain (counted up to the
    /// filter's `min_blocked_sessions`, and only when it has one).
    pub blocked_sessions: u32,
    /// The earliest wait_start among those (only when the filter has `min_blocking_age`).
    pub longest_wait_behind: Option<i64>,
    /// The filter's `holding_up` keys it satisfies, a bit each (set by the filter, from
    /// [`LockChains::holding_up`]).
    pub holding_up: u16,
}

impl LockFacts {
    /// The head of a chain: it blocks someone and waits for nobody.
    pub fn root(&self) -> bool {
        self.blocking && !self.blocked
    }
}

/// The lock graph of one moment, with what the filter needs worked out.
#[derive(Debug, Clone, Default)]
pub struct LockChains {
    /// Each process's lock group.
    group_of: HashMap<i32, i32>,
    /// The facts of each lock group that blocks or waits.
    facts: HashMap<i32, LockFacts>,
    /// The compact graph reversed, kept when someone will ask who holds up whom.
    behind: Option<Reversed>,
}

/// The compact graph's edges reversed (from each node, the nodes that point at it), and each
/// real node's index by its group: built once per look, walked once per `holding_up` key.
#[derive(Debug, Clone, Default)]
struct Reversed {
    groups: Vec<i32>,
    index: HashMap<i32, usize>,
    into: Vec<Vec<usize>>,
}

impl Reversed {
    fn of(graph: Graph, steps: &mut Steps) -> Reversed {
        let index = graph
            .groups
            .iter()
            .enumerate()
            .map(|(i, &g)| (g, i))
            .collect();
        let mut into: Vec<Vec<usize>> = vec![Vec::new(); graph.edges.len()];
        for (from, outs) in graph.edges.iter().enumerate() {
            steps.step(outs.len() as u64 + 1);
            for &to in outs {
                into[to].push(from);
            }
        }
        Reversed {
            groups: graph.groups,
            index,
            into,
        }
    }
}

/// How many steps between two calls of `check`.
const CHECK_EVERY: u64 = 4096;

/// Counts steps, calling `check` every [`CHECK_EVERY`].
struct Steps<'c> {
    n: u64,
    check: &'c mut dyn FnMut(),
}

impl Steps<'_> {
    fn step(&mut self, by: u64) {
        let before = self.n / CHECK_EVERY;
        self.n += by;
        if self.n / CHECK_EVERY != before {
            (self.check)();
        }
    }
}

impl LockChains {
    pub fn new(waits: Waits, needs: ChainNeeds, check: &mut dyn FnMut()) -> LockChains {
        let mut steps = Steps { n: 0, check };
        let mut facts: HashMap<i32, LockFacts> = HashMap::new();
        let mut group_of = HashMap::with_capacity(waits.waiting.len());
        let mut weight: HashMap<i32, u32> = HashMap::new();
        for w in &waits.waiting {
            steps.step(1);
            group_of.insert(w.pid, w.group);
            *weight.entry(w.group).or_default() += 1;
            if let Some(start) = w.wait_start {
                let f = facts.entry(w.group).or_default();
                f.wait_start = Some(f.wait_start.map_or(start, |s| s.min(start)));
            }
        }
        for queue in &waits.queues {
            direct_facts(queue, &mut facts, &mut steps);
        }
        for (group, blockers) in &waits.lists {
            for &b in blockers.iter().filter(|&&b| b != *group) {
                steps.step(1);
                facts.entry(*group).or_default().blocked = true;
                facts.entry(b).or_default().blocking = true;
            }
        }
        // Only waiting groups count as waiting (a list or a queue with no blocker left after
        // its own group is taken out does not).
        for f in facts.values_mut() {
            if !f.blocked {
                f.wait_start = None;
            }
        }
        let mut behind = None;
        if needs.count_up_to.is_some() || needs.longest_wait_behind || needs.holding_up {
            let g = Graph::build(&waits, &weight, &mut steps);
            if needs.count_up_to.is_some() || needs.longest_wait_behind {
                g.work_out(needs, &mut facts, &mut steps);
            }
            if needs.holding_up {
                behind = Some(Reversed::of(g, &mut steps));
            }
        }
        LockChains {
            group_of,
            facts,
            behind,
        }
    }

    /// The lock groups that hold up, directly or through a chain, one of `held` (processes'
    /// pids): a walk back along the waits, linear in the graph. A process counts as holding
    /// itself up only in a cycle. Empty unless the chains were built for `holding_up`.
    pub fn holding_up(&self, held: &[i32], check: &mut dyn FnMut()) -> HashSet<i32> {
        let Some(graph) = &self.behind else {
            return HashSet::new();
        };
        let mut steps = Steps { n: 0, check };
        let mut seen = vec![false; graph.into.len()];
        let mut stack: Vec<usize> = held
            .iter()
            .filter_map(|pid| graph.index.get(&self.group(*pid)))
            .copied()
            .collect();
        // Each start is looked behind, and is reached itself only through an edge.
        let mut holders = HashSet::new();
        while let Some(node) = stack.pop() {
            steps.step(1);
            for &from in &graph.into[node] {
                if !seen[from] {
                    seen[from] = true;
                    if from < graph.groups.len() {
                        holders.insert(graph.groups[from]);
                    }
                    stack.push(from);
                }
            }
        }
        holders
    }

    /// Each process's lock group (its own pid when it is in none).
    pub fn group(&self, pid: i32) -> i32 {
        self.group_of.get(&pid).copied().unwrap_or(pid)
    }

    /// `pid`'s place in the graph.
    pub fn facts(&self, pid: i32) -> LockFacts {
        let group = self.group_of.get(&pid).copied().unwrap_or(pid);
        self.facts.get(&group).copied().unwrap_or_default()
    }

    /// Whether a prepared transaction (a group of 0 in a capture, below 0 live) holds up
    /// anyone.
    pub fn a_prepared_transaction_blocks(&self) -> bool {
        self.facts.iter().any(|(&g, f)| g <= 0 && f.blocking)
    }
}

/// Who blocks and who is blocked in one queue, straight from it, in time linear in it: per
/// lock mode, the first two distinct groups that hold (or wait for) it are enough to tell
/// whether some group other than a given one does.
fn direct_facts(queue: &LockQueue, facts: &mut HashMap<i32, LockFacts>, steps: &mut Steps) {
    /// Up to two distinct groups.
    #[derive(Clone, Copy, Default)]
    struct Two(Option<i32>, Option<i32>);
    impl Two {
        fn add(&mut self, g: i32) {
            match *self {
                Two(None, _) => self.0 = Some(g),
                Two(Some(a), None) if a != g => self.1 = Some(g),
                _ => {}
            }
        }
        /// Some group other than `g`.
        fn other_than(&self, g: i32) -> bool {
            self.0.is_some_and(|a| a != g) || self.1.is_some_and(|b| b != g)
        }
    }
    let modes = 0..=MAX_LOCK_MODE;
    let conflicts = |a: usize, b: usize| queue.conflicts[a] & (1 << b) != 0;
    // Holders by mode held.
    let mut holding = [Two::default(); MAX_LOCK_MODE + 1];
    for h in &queue.holders {
        steps.step(1);
        for m in modes.clone().filter(|m| h.modes & (1 << m) != 0) {
            holding[m].add(h.group);
        }
    }
    // Waiters by mode, anywhere in the queue (for the holders they hold up), and ahead of each
    // waiter as the queue is walked.
    let mut waiting = [Two::default(); MAX_LOCK_MODE + 1];
    for w in &queue.waiters {
        waiting[usize::from(w.mode).min(MAX_LOCK_MODE)].add(w.group);
    }
    let mut ahead = [Two::default(); MAX_LOCK_MODE + 1];
    for w in &queue.waiters {
        steps.step(1);
        let m = usize::from(w.mode).min(MAX_LOCK_MODE);
        let blocked = modes
            .clone()
            .filter(|&other| conflicts(m, other))
            .any(|other| holding[other].other_than(w.group) || ahead[other].other_than(w.group));
        if blocked {
            facts.entry(w.group).or_default().blocked = true;
        }
        ahead[m].add(w.group);
    }
    for h in &queue.holders {
        steps.step(1);
        let blocks = modes
            .clone()
            .filter(|&m| waiting[m].other_than(h.group))
            .any(|m| {
                modes
                    .clone()
                    .any(|held| h.modes & (1 << held) != 0 && conflicts(m, held))
            });
        if blocks {
            facts.entry(h.group).or_default().blocking = true;
        }
    }
    // A waiter holds up those behind it that ask for a mode conflicting with its own: walked
    // from the back, with the groups seen behind by mode.
    let mut behind = [Two::default(); MAX_LOCK_MODE + 1];
    for w in queue.waiters.iter().rev() {
        steps.step(1);
        let m = usize::from(w.mode).min(MAX_LOCK_MODE);
        let blocks = modes
            .clone()
            .filter(|&other| conflicts(other, m))
            .any(|other| behind[other].other_than(w.group));
        if blocks {
            facts.entry(w.group).or_default().blocking = true;
        }
        behind[m].add(w.group);
    }
}

/// The compact waits-for graph: real nodes (lock groups, weighted by their processes) and
/// virtual ones (sets of them), edges from blocker to blocked.
struct Graph {
    /// The group of each real node; real nodes come first.
    groups: Vec<i32>,
    /// The weight of each real node: how many processes it counts for.
    weights: Vec<u32>,
    /// Edges out of each node (real and virtual).
    edges: Vec<Vec<usize>>,
}

impl Graph {
    fn build(waits: &Waits, weight: &HashMap<i32, u32>, steps: &mut Steps) -> Graph {
        // Real nodes: every group that holds, waits or blocks, in a stable order.
        let mut groups: Vec<i32> = waits
            .queues
            .iter()
            .flat_map(|q| {
                q.holders
                    .iter()
                    .map(|h| h.group)
                    .chain(q.waiters.iter().map(|w| w.group))
            })
            .chain(
                waits
                    .lists
                    .iter()
                    .flat_map(|(g, bs)| std::iter::once(*g).chain(bs.iter().copied())),
            )
            .collect();
        steps.step(groups.len() as u64);
        groups.sort_unstable();
        groups.dedup();
        let index: HashMap<i32, usize> = groups.iter().enumerate().map(|(i, &g)| (g, i)).collect();
        let weights = groups
            .iter()
            .map(|g| weight.get(g).copied().unwrap_or(1))
            .collect();
        let mut edges: Vec<Vec<usize>> = vec![Vec::new(); groups.len()];
        let node = |edges: &mut Vec<Vec<usize>>| {
            edges.push(Vec::new());
            edges.len() - 1
        };
        for (group, blockers) in &waits.lists {
            let w = index[group];
            for b in blockers.iter().filter(|&&b| b != *group) {
                steps.step(1);
                edges[index[b]].push(w);
            }
        }
        let modes = 0..=MAX_LOCK_MODE;
        for queue in &waits.queues {
            let conflicts = |a: usize, b: usize| queue.conflicts[a] & (1 << b) != 0;
            let mode_of = |w: &Queued| usize::from(w.mode).min(MAX_LOCK_MODE);
            // The holders in a mode that conflicts with m, for each mode m waited for.
            let mut held_against: [Option<usize>; MAX_LOCK_MODE + 1] = [None; MAX_LOCK_MODE + 1];
            let mut waited = [false; MAX_LOCK_MODE + 1];
            for w in &queue.waiters {
                waited[mode_of(w)] = true;
            }
            for m in modes.clone().filter(|&m| waited[m]) {
                let blockers: Vec<usize> = queue
                    .holders
                    .iter()
                    .filter(|h| {
                        modes
                            .clone()
                            .any(|held| h.modes & (1 << held) != 0 && conflicts(m, held))
                    })
                    .map(|h| index[&h.group])
                    .collect();
                steps.step(queue.holders.len() as u64);
                if !blockers.is_empty() {
                    let v = node(&mut edges);
                    for b in blockers {
                        edges[b].push(v);
                    }
                    held_against[m] = Some(v);
                }
            }
            // Behind each waiter, the queue: `behind[m]` is the virtual node of the last waiter
            // so far that asked for mode m ("everyone behind it that conflicts with m"). A
            // mode nobody in the queue conflicts with needs none.
            let wanted: [bool; MAX_LOCK_MODE + 1] =
                std::array::from_fn(|m| queue.waiters.iter().any(|w| conflicts(mode_of(w), m)));
            let mut behind: [Option<usize>; MAX_LOCK_MODE + 1] = [None; MAX_LOCK_MODE + 1];
            for w in &queue.waiters {
                steps.step(1);
                let m = mode_of(w);
                let me = index[&w.group];
                if let Some(v) = held_against[m] {
                    edges[v].push(me);
                }
                for other in modes.clone().filter(|&other| conflicts(m, other)) {
                    if let Some(v) = behind[other] {
                        edges[v].push(me);
                    }
                }
                if wanted[m] {
                    let v = node(&mut edges);
                    edges[me].push(v);
                    if let Some(previous) = behind[m] {
                        edges[previous].push(v);
                    }
                    behind[m] = Some(v);
                }
            }
        }
        Graph {
            groups,
            weights,
            edges,
        }
    }

    /// The counts and the earliest waits behind every blocker, into `facts`.
    fn work_out(&self, needs: ChainNeeds, facts: &mut HashMap<i32, LockFacts>, steps: &mut Steps) {
        let real = self.groups.len();
        let component = tarjan(&self.edges, steps);
        let count = component.iter().copied().max().map_or(0, |c| c + 1);
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); count];
        for (i, &c) in component.iter().enumerate() {
            members[c].push(i);
        }
        let starts: Vec<Option<i64>> = self
            .groups
            .iter()
            .map(|g| facts.get(g).and_then(|f| f.wait_start))
            .collect();
        let start = |i: usize| starts.get(i).copied().flatten();
        let min = |a: Option<i64>, b: Option<i64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, None) => x,
            (None, y) => y,
        };
        // Per component: what is behind it from outside it (the earliest wait; the real nodes,
        // as a set, or "at the cap" once there are that many).
        let mut earliest_outside: Vec<Option<i64>> = vec![None; count];
        let mut earliest_in: Vec<Option<i64>> = vec![None; count];
        let mut reach: Vec<Option<Reach>> = vec![None; count];
        // How many components still need each one's set: it is dropped after its last user.
        let mut users = vec![0u32; count];
        let successors: Vec<Vec<usize>> = (0..count)
            .map(|c| {
                let mut s: Vec<usize> = members[c]
                    .iter()
                    .flat_map(|&i| self.edges[i].iter().map(|&j| component[j]))
                    .filter(|&d| d != c)
                    .collect();
                s.sort_unstable();
                s.dedup();
                s
            })
            .collect();
        for s in &successors {
            for &d in s {
                users[d] += 1;
            }
        }
        let own_weight = |c: usize| -> u64 {
            members[c]
                .iter()
                .filter(|&&i| i < real)
                .map(|&i| u64::from(self.weights[i]))
                .sum()
        };
        let cap = needs.count_up_to.map(u64::from);
        // The sets hold only nodes someone can be behind (a real node with an edge into it):
        // a blocker that waits for nothing is in no set, however many of them a capture names.
        let mut bit_of = vec![u32::MAX; real];
        let mut counted: Vec<usize> = Vec::new();
        for outs in &self.edges {
            steps.step(outs.len() as u64 + 1);
            for &j in outs {
                if j < real && bit_of[j] == u32::MAX {
                    bit_of[j] = counted.len() as u32;
                    counted.push(j);
                }
            }
        }
        let domain = Domain {
            bit_of: &bit_of,
            weights: counted.iter().map(|&i| self.weights[i]).collect(),
        };
        let words = counted.len().div_ceil(64);
        // Components come out of Tarjan's algorithm in reverse topological order (a component
        // after every component it reaches), so each is done after all it leads to.
        for c in 0..count {
            steps.step(successors[c].len() as u64 + 1);
            let mut from_outside = None;
            for &d in &successors[c] {
                from_outside = min(from_outside, min(earliest_in[d], earliest_outside[d]));
            }
            earliest_outside[c] = from_outside;
            if let Some(cap) = cap {
                reach[c] = Some(self.union(
                    &successors[c],
                    &members,
                    &reach,
                    (&domain, cap, words),
                    steps,
                ));
            }
            // The two earliest starts of the real members, and whose the earliest is: the
            // earliest among a member's others is the first, or the second for its owner.
            let (mut first, mut first_of, mut second) = (None::<i64>, usize::MAX, None::<i64>);
            for &i in members[c].iter().filter(|&&i| i < real) {
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
            let real_members: Vec<usize> =
                members[c].iter().copied().filter(|&i| i < real).collect();
            let cyclic = real_members.len() > 1;
            for &i in &real_members {
                let f = facts.entry(self.groups[i]).or_default();
                if !f.blocking {
                    continue;
                }
                if needs.longest_wait_behind {
                    let mut behind = from_outside;
                    if cyclic {
                        behind = min(behind, if i == first_of { second } else { first });
                    }
                    f.longest_wait_behind = behind;
                }
                if let (Some(cap), Some(r)) = (cap, &reach[c]) {
                    let others = own_weight(c) - u64::from(self.weights[i]);
                    let n = r.weight(&domain.weights, cap, steps) + others;
                    f.blocked_sessions = u32::try_from(n.min(cap)).unwrap_or(u32::MAX);
                }
            }
            // A set is kept only while a component still to come needs it.
            for &d in &successors[c] {
                users[d] -= 1;
                if users[d] == 0 {
                    reach[d] = None;
                }
            }
            if users[c] == 0 {
                reach[c] = None;
            }
        }
    }

    /// What is behind a component from outside it: the union, over its successors, of their
    /// real members and what is behind them; "at the cap" as soon as that weighs `cap`.
    fn union(
        &self,
        successors: &[usize],
        members: &[Vec<usize>],
        reach: &[Option<Reach>],
        (domain, cap, words): (&Domain, u64, usize),
        steps: &mut Steps,
    ) -> Reach {
        let real = self.groups.len();
        let has_real = |d: usize| members[d].iter().any(|&i| i < real);
        // One successor that adds no real node of its own: its set is this one's.
        if let [d] = successors {
            if !has_real(*d) {
                if let Some(r) = &reach[*d] {
                    return r.clone();
                }
            }
        }
        if successors.is_empty() {
            return Reach::Set(Rc::new(vec![0; 0]), 0);
        }
        steps.step(words as u64);
        let mut bits = vec![0u64; words];
        for &d in successors {
            match &reach[d] {
                Some(Reach::Full) => return Reach::Full,
                Some(Reach::Set(other, _)) => {
                    steps.step(other.len() as u64);
                    for (b, o) in bits.iter_mut().zip(other.iter()) {
                        *b |= o;
                    }
                }
                None => {}
            }
            for &i in members[d].iter().filter(|&&i| i < real) {
                let bit = domain.bit_of[i] as usize;
                if bit < words * 64 {
                    bits[bit / 64] |= 1 << (bit % 64);
                }
            }
        }
        let set = Reach::Set(Rc::new(bits), 0);
        let weight = set.weight(&domain.weights, cap, steps);
        match set {
            _ if weight >= cap => Reach::Full,
            Reach::Set(bits, _) => Reach::Set(bits, weight),
            full => full,
        }
    }
}

/// The real nodes behind a component: a set of them with its weight, or "at least the cap".
#[derive(Debug, Clone)]
enum Reach {
    Set(Rc<Vec<u64>>, u64),
    Full,
}

/// The nodes the sets are made of: each counted node's bit, and each bit's weight.
struct Domain<'a> {
    bit_of: &'a [u32],
    weights: Vec<u32>,
}

impl Reach {
    /// The weight of the set, up to `cap` (its own once worked out): it stops counting there.
    fn weight(&self, weights: &[u32], cap: u64, steps: &mut Steps) -> u64 {
        match self {
            Reach::Full => cap,
            Reach::Set(_, w) if *w > 0 => *w,
            Reach::Set(bits, _) => {
                let mut total = 0u64;
                for (word_index, &word) in bits.iter().enumerate() {
                    steps.step(1);
                    let mut word = word;
                    while word != 0 {
                        let bit = word.trailing_zeros() as usize;
                        total += u64::from(weights[word_index * 64 + bit]);
                        if total >= cap {
                            return total;
                        }
                        word &= word - 1;
                    }
                }
                total
            }
        }
    }
}

/// The strongly connected component of each node, numbered in the order Tarjan's algorithm
/// finishes them (reverse topological order); iterative, so a long chain cannot overflow the
/// stack.
fn tarjan(edges: &[Vec<usize>], steps: &mut Steps) -> Vec<usize> {
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
            steps.step(1);
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
