//! Matching a validated [`Filter`] against sessions, and choosing the victims.

use std::cmp::Ordering;
use std::net::IpAddr;

use super::{
    AddrList, AddrMatch, Criteria, Filter, MatchContext, Order, PidMatch, Session, TextField,
    TextMatch, NAMED_ONLY_BACKEND_TYPES,
};

/// How a successful match named the session's backend type. Non-client backends are only
/// touched when a `backend_type` condition that held was part of the match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TypeNaming {
    None,
    Regex,
    Exact,
}

impl Filter {
    /// Whether `s` may be a victim: every row-level rule, everything but `limit`.
    pub fn matches(&self, s: &Session, ctx: &MatchContext) -> bool {
        if s.pid == ctx.self_pid || (s.superuser && !self.include_superusers) {
            return false;
        }
        let Some(naming) = self.criteria.eval(s, ctx.now) else {
            return false;
        };
        match s.backend_type.as_deref() {
            Some(t) if NAMED_ONLY_BACKEND_TYPES.contains(&t) => naming == TypeNaming::Exact,
            _ if s.client_backend => true,
            _ => naming >= TypeNaming::Regex,
        }
    }

    /// The victims among `sessions`, as indexes, in `order`, at most `limit` of them.
    pub fn select<S: AsRef<Session>>(&self, sessions: &[S], ctx: &MatchContext) -> Vec<usize> {
        let session = |i: usize| sessions[i].as_ref();
        let mut victims: Vec<usize> = (0..sessions.len())
            .filter(|&i| self.matches(session(i), ctx))
            .collect();
        victims.sort_by(|&a, &b| self.order.compare(session(a), session(b)));
        if let Some(limit) = self.limit {
            victims.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        }
        victims
    }
}

impl AsRef<Session> for Session {
    fn as_ref(&self) -> &Session {
        self
    }
}

impl Filter {
    /// Whether matching needs `blocking`/`blocked`, which cost a lock-manager read per backend.
    pub fn needs_lock_info(&self) -> bool {
        self.criteria.uses_lock_info()
    }
}

impl Order {
    /// Oldest first (newest first for `newest_backend`); a NULL timestamp sorts last; pid breaks ties.
    pub fn compare(self, a: &Session, b: &Session) -> Ordering {
        let key = |s: &Session| match self {
            Order::OldestBackend | Order::NewestBackend => s.backend_start,
            Order::OldestXact => s.xact_start,
            Order::OldestQuery => s.query_start,
            Order::OldestState => s.state_change,
        };
        let by_time = match (key(a), key(b)) {
            (Some(x), Some(y)) if self == Order::NewestBackend => y.cmp(&x),
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
            || self.any.iter().flatten().any(Criteria::uses_lock_info)
            || self
                .exclude
                .as_deref()
                .is_some_and(Criteria::uses_lock_info)
    }

    /// `None` when the node does not match; otherwise how the match named the backend type.
    fn eval(&self, s: &Session, now: i64) -> Option<TypeNaming> {
        let mut naming = TypeNaming::None;
        for (field, m) in &self.text {
            if !m.matches(field.value(s)) {
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
        if self.blocking.is_some_and(|want| want != s.blocking)
            || self.blocked.is_some_and(|want| want != s.blocked)
        {
            return None;
        }
        if let Some(branches) = &self.any {
            naming = naming.max(branches.iter().filter_map(|b| b.eval(s, now)).max()?);
        }
        if let Some(exclude) = &self.exclude {
            if exclude.eval(s, now).is_some() {
                return None;
            }
        }
        Some(naming)
    }
}

impl TextMatch {
    /// A NULL column never matches.
    fn matches(&self, value: Option<&str>) -> bool {
        let Some(v) = value else { return false };
        match self {
            TextMatch::Exact(s) => s == v,
            TextMatch::OneOf(list) => list.iter().any(|s| s == v),
            TextMatch::Regex(r) => r.is_match(v),
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
