//! Matching a validated [`Filter`] against sessions, and choosing the victims.

use std::cmp::Ordering;
use std::net::IpAddr;

use std::collections::{HashMap, HashSet};

use super::{
    AddrList, AddrMatch, Blocking, ChainNeeds, Criteria, Filter, MatchContext, Order, PidMatch,
    Session, TextField, TextMatch, NAMED_ONLY_BACKEND_TYPES,
};

/// How a successful match named the session's backend type. Non-client backends are only
/// touched when a `backend_type` condition that held was part of the match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TypeNaming {
    None,
    Regex,
    Exact,
}

/// What the filter makes of one session, before quotas and `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    No,
    /// It matches, but it is a protected tool or role and the filter does not say
    /// `include_protected`.
    Protected,
    Yes,
}

/// The victims a filter chose among sessions, and what it left out that the caller should
/// hear about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Indexes into the sessions, in the filter's order.
    pub victims: Vec<usize>,
    /// Sessions that matched but are protected (pg_reaper.protected_applications / _roles).
    pub protected: usize,
    /// Sessions that matched a filter with a quota but that the caller may not see: a quota
    /// cannot rank them (their timestamps and address are hidden), so it spares them.
    pub hidden_in_quota: usize,
}

impl Filter {
    /// Whether `s` may be a victim: every row-level rule, everything but `keep` and `limit`.
    pub fn matches(&self, s: &Session, ctx: &MatchContext) -> bool {
        self.verdict(s, ctx) == Verdict::Yes
    }

    /// `verdict`, after the context's cancel point: for the loops over many sessions.
    fn checked_verdict(&self, s: &Session, ctx: &MatchContext) -> Verdict {
        (ctx.interrupt)();
        self.verdict(s, ctx)
    }

    pub fn verdict(&self, s: &Session, ctx: &MatchContext) -> Verdict {
        if s.pid == ctx.self_pid || (s.superuser && !self.include_superusers) {
            return Verdict::No;
        }
        let mut memo = Memo::default();
        let Some(naming) = self.criteria.eval(s, ctx, &mut memo) else {
            return Verdict::No;
        };
        let by_type = match s.backend_type.as_deref() {
            Some(t) if NAMED_ONLY_BACKEND_TYPES.contains(&t) => naming == TypeNaming::Exact,
            _ if s.client_backend => true,
            _ => naming >= TypeNaming::Regex,
        };
        if !by_type {
            Verdict::No
        } else if !self.include_protected && ctx.protected.covers(s) {
            Verdict::Protected
        } else {
            Verdict::Yes
        }
    }

    /// The victims among `sessions`, in `order`: those that match, less the first `keep` of
    /// each group, at most `limit` of them.
    pub fn select<S: AsRef<Session>>(&self, sessions: &[S], ctx: &MatchContext) -> Selection {
        let mut selection = self.select_unlimited(sessions, ctx);
        if let Some(limit) = self.limit {
            selection
                .victims
                .truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        }
        selection
    }

    /// `select` without `limit`: every session that is a victim of this filter now. (A victim
    /// is re-checked against a fresh snapshot with this: a quota's excess may have become
    /// part of the quota since.)
    pub fn select_unlimited<S: AsRef<Session>>(
        &self,
        sessions: &[S],
        ctx: &MatchContext,
    ) -> Selection {
        let session = |i: usize| sessions[i].as_ref();
        let mut protected = 0;
        let mut victims: Vec<usize> = (0..sessions.len())
            .filter(|&i| match self.checked_verdict(session(i), ctx) {
                Verdict::Yes => true,
                Verdict::Protected => {
                    protected += 1;
                    false
                }
                Verdict::No => false,
            })
            .collect();
        let mut hidden_in_quota = 0;
        if self.keep.is_some() {
            victims.retain(|&i| {
                let hidden = session(i).hidden;
                hidden_in_quota += usize::from(hidden);
                !hidden
            });
        }
        victims.sort_by(|&a, &b| self.order.compare(session(a), session(b)));
        if let Some(keep) = self.keep {
            let keep = usize::try_from(keep).unwrap_or(usize::MAX);
            let mut kept: HashMap<Vec<Option<String>>, usize> = HashMap::new();
            victims.retain(|&i| {
                let group = self.per.iter().map(|f| f.value(session(i))).collect();
                let n = kept.entry(group).or_default();
                *n += 1;
                *n > keep
            });
        }
        Selection {
            victims,
            protected,
            hidden_in_quota,
        }
    }

    /// The pids `select_unlimited` chooses.
    pub fn victim_pids<S: AsRef<Session>>(
        &self,
        sessions: &[S],
        ctx: &MatchContext,
    ) -> HashSet<i32> {
        self.select_unlimited(sessions, ctx)
            .victims
            .into_iter()
            .map(|i| sessions[i].as_ref().pid)
            .collect()
    }
}

impl AsRef<Session> for Session {
    fn as_ref(&self) -> &Session {
        self
    }
}

impl AsMut<Session> for Session {
    fn as_mut(&mut self) -> &mut Session {
        self
    }
}

impl Filter {
    /// Whether matching needs the lock graph, which costs a look at the lock manager.
    pub fn needs_lock_info(&self) -> bool {
        self.criteria.uses_lock_info()
    }

    /// What the lock chains must work out for this filter (None: no lock key at all).
    pub fn chain_needs(&self) -> Option<ChainNeeds> {
        self.needs_lock_info().then(|| self.criteria.chain_needs())
    }

    /// Whether matching needs "now" (an age key).
    pub fn needs_now(&self) -> bool {
        self.criteria.uses_ages()
    }

    /// Sets, on every session, which of the filter's `holding_up` keys it satisfies: for each,
    /// the sessions the key's own filter matches (a row rule only: the safe defaults are for
    /// whom a filter selects, not for whom it protects), and those `chains` says hold them up,
    /// directly or through a chain. The sessions' other lock facts are set already.
    pub fn mark_holding_up<S: AsRef<Session> + AsMut<Session>>(
        &self,
        sessions: &mut [S],
        ctx: &MatchContext,
        chains: &super::LockChains,
    ) {
        let mut keys = Vec::new();
        self.criteria.holding_up_keys(&mut keys);
        for s in sessions.iter_mut() {
            s.as_mut().locks.holding_up = 0;
        }
        for (k, held) in keys {
            let pids: Vec<i32> = sessions
                .iter()
                .map(AsRef::as_ref)
                .filter(|s| {
                    (ctx.interrupt)();
                    held.eval(s, ctx, &mut Memo::default()).is_some()
                })
                .map(|s| s.pid)
                .collect();
            let holders = chains.holding_up(&pids, &mut || (ctx.interrupt)());
            for s in sessions.iter_mut() {
                let s = s.as_mut();
                if holders.contains(&chains.group(s.pid)) {
                    s.locks.holding_up |= 1 << k;
                }
            }
        }
    }

    /// Whether any part of the filter has the age key `field`.
    pub fn uses_age(&self, field: super::AgeField) -> bool {
        self.criteria.uses_age(field)
    }

    /// Whether matching reads the query text (which the final check then copies).
    pub fn reads_query(&self) -> bool {
        self.criteria.uses_text(TextField::Query)
    }
}

impl Order {
    /// By the order's timestamp, oldest (or newest) first; a NULL timestamp sorts last either
    /// way; pid breaks ties.
    pub fn compare(self, a: &Session, b: &Session) -> Ordering {
        let by_time = match (self.key.value(a), self.key.value(b)) {
            (Some(x), Some(y)) if self.newest_first => y.cmp(&x),
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        by_time.then(a.pid.cmp(&b.pid))
    }
}

impl Criteria {
    fn uses_lock_info(&self) -> bool {
        self.blocking.is_some()
            || self.blocked.is_some()
            || self.min_blocked_sessions.is_some()
            || self.holding_up.is_some()
            || self.min_age.iter().any(|(f, _)| f.is_lock_age())
            || self.any.iter().flatten().any(Criteria::uses_lock_info)
            || self
                .exclude
                .as_deref()
                .is_some_and(Criteria::uses_lock_info)
    }

    fn chain_needs(&self) -> ChainNeeds {
        let mut needs = ChainNeeds {
            count_up_to: self.min_blocked_sessions,
            longest_wait_behind: self
                .min_age
                .iter()
                .any(|(f, _)| *f == super::AgeField::Blocking),
            holding_up: self.holding_up.is_some(),
        };
        let held = self.holding_up.as_ref().map(|(_, h)| h.as_ref());
        for sub in self
            .any
            .iter()
            .flatten()
            .chain(self.exclude.as_deref())
            .chain(held)
        {
            let n = sub.chain_needs();
            needs.holding_up |= n.holding_up;
            needs.count_up_to = needs.count_up_to.max(n.count_up_to);
            needs.longest_wait_behind |= n.longest_wait_behind;
        }
        needs
    }

    /// Every `holding_up` key in this node and below, with its number.
    fn holding_up_keys<'c>(&'c self, out: &mut Vec<(usize, &'c Criteria)>) {
        if let Some((k, held)) = &self.holding_up {
            out.push((*k, held));
        }
        for sub in self.any.iter().flatten().chain(self.exclude.as_deref()) {
            sub.holding_up_keys(out);
        }
    }

    fn uses_text(&self, field: TextField) -> bool {
        self.text.iter().any(|(f, _)| *f == field)
            || self.any.iter().flatten().any(|c| c.uses_text(field))
            || self.exclude.as_deref().is_some_and(|c| c.uses_text(field))
    }

    fn uses_age(&self, field: super::AgeField) -> bool {
        self.min_age.iter().any(|(f, _)| *f == field)
            || self.any.iter().flatten().any(|c| c.uses_age(field))
            || self.exclude.as_deref().is_some_and(|c| c.uses_age(field))
    }

    fn uses_ages(&self) -> bool {
        !self.min_age.is_empty()
            || self.any.iter().flatten().any(Criteria::uses_ages)
            || self.exclude.as_deref().is_some_and(Criteria::uses_ages)
    }

    /// `None` when the node does not match; otherwise how the match named the backend type.
    fn eval(&self, s: &Session, ctx: &MatchContext, memo: &mut Memo) -> Option<TypeNaming> {
        let now = ctx.now;
        let mut naming = TypeNaming::None;
        for (field, m) in &self.text {
            if !m.matches(*field, field.value(s), ctx, memo) {
                return None;
            }
            if *field == TextField::BackendType {
                naming = match m {
                    TextMatch::Regex(_) => TypeNaming::Regex,
                    _ => TypeNaming::Exact,
                };
            }
        }
        if let Some(addrs) = &self.client_addr {
            let list = match addrs {
                AddrList::One(a) => std::slice::from_ref(a),
                AddrList::Many(list) => list.as_slice(),
            };
            if !list.iter().any(|a| a.matches(s)) {
                return None;
            }
        }
        match &self.pid {
            Some(PidMatch::One(p)) if *p != s.pid => return None,
            Some(PidMatch::Many(list)) if !list.contains(&s.pid) => return None,
            _ => {}
        }
        for (field, min) in &self.min_age {
            // A NULL timestamp never matches.
            match field.value(s) {
                Some(t) if now.saturating_sub(t) >= *min => {}
                _ => return None,
            }
        }
        let blocking = match self.blocking {
            None => true,
            Some(Blocking::Is(want)) => want == s.locks.blocking,
            Some(Blocking::Root) => s.locks.root(),
        };
        if let Some((k, _)) = &self.holding_up {
            if s.locks.holding_up & (1 << k) == 0 {
                return None;
            }
        }
        if !blocking
            || self.blocked.is_some_and(|want| want != s.locks.blocked)
            || self
                .min_blocked_sessions
                .is_some_and(|n| s.locks.blocked_sessions < n)
        {
            return None;
        }
        if let Some(branches) = &self.any {
            naming = naming.max(branches.iter().filter_map(|b| b.eval(s, ctx, memo)).max()?);
        }
        if let Some(exclude) = &self.exclude {
            if exclude.eval(s, ctx, memo).is_some() {
                return None;
            }
        }
        Some(naming)
    }
}

/// The regexes already evaluated for one session: one pattern on one column is evaluated once,
/// however often the filter names it (copies of a pattern share their compiled regex, and cost
/// the budget nothing, so their number must cost the matching nothing either).
#[derive(Default)]
struct Memo(Vec<(usize, TextField, bool)>);

impl TextMatch {
    /// A NULL column never matches. Each regex evaluation is a cancel point: a filter's regexes
    /// are bounded in number and each is linear in the text, but the text may be long.
    fn matches(
        &self,
        field: TextField,
        value: Option<&str>,
        ctx: &MatchContext,
        memo: &mut Memo,
    ) -> bool {
        let Some(v) = value else { return false };
        match self {
            TextMatch::Exact(s) => s == v,
            TextMatch::OneOf(list) => list.iter().any(|s| s == v),
            TextMatch::Regex(r) => {
                let id = r.id();
                if let Some(&(_, _, known)) =
                    memo.0.iter().find(|(i, f, _)| *i == id && *f == field)
                {
                    return known;
                }
                (ctx.interrupt)();
                let found = r.is_match(v);
                memo.0.push((id, field, found));
                found
            }
        }
    }
}

impl AddrMatch {
    fn matches(&self, s: &Session) -> bool {
        match self {
            // pg_stat_activity reports a Unix-socket client as client_addr NULL, client_port -1.
            AddrMatch::Local => s.client_addr.is_none() && s.client_port == Some(-1),
            AddrMatch::Net(net) => match s.client_addr {
                Some(IpAddr::V6(v6)) if net.network().is_ipv4() => v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| net.contains(&IpAddr::V4(v4))),
                Some(addr) => net.contains(&addr),
                None => false,
            },
        }
    }
}
