//! The filter language, in plain Rust: parse and validate a JSON filter, normalize it, and match
//! it against a [`Session`] (one row of `pg_stat_activity`, already converted). Nothing in here
//! touches the server, so every rule is unit-tested and fuzzed without one.
//!
//! A filter is a JSON object whose keys are all optional and must all hold (AND). See README.md
//! ("Filter reference") for the user-facing description of every key.

pub mod chains;
mod error;
mod interval;
mod matching;
mod parse;
mod pattern;
#[cfg(test)]
mod proptests;
pub mod replay;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

pub use chains::{
    ChainNeeds, Holder, LockChains, LockFacts, LockQueue, Queued, WaitingProcess, Waits,
    MAX_LOCK_MODE,
};
pub use error::FilterError;
pub use interval::parse_interval;
pub use matching::{Selection, Verdict};
pub use pattern::{MAX_REGEX_BYTES, REGEX_BUDGET_BYTES};

/// Bounds that keep validation and matching cheap whatever a user types.
pub const MAX_FILTER_BYTES: usize = 64 * 1024;
/// Levels of `any` / `exclude` nesting.
pub const MAX_NESTING: usize = 8;
/// Bytes in one string value (a name, a pattern, an address, an interval).
pub const MAX_STRING_BYTES: usize = 4 * 1024;
/// `holding_up` keys in one filter (each costs a walk of the lock graph per look).
pub const MAX_HOLDING_UP: usize = 16;
/// Items in one array value.
pub const MAX_ARRAY_ITEMS: usize = 10_000;

/// Backend types that only an exact `backend_type` string or array naming them can select, never
/// a regex: the pg_cron scheduler and pg_reaper's own worker would otherwise die to
/// `{"backend_type": {"regex": "."}}`.
pub const NAMED_ONLY_BACKEND_TYPES: &[&str] = &["pg_cron launcher", WORKER_TYPE];

/// pg_reaper's own background worker's type: its `backend_type` in pg_stat_activity, its
/// application_name, and the caller its runs are recorded as.
pub const WORKER_TYPE: &str = "pg_reaper worker";

/// One backend as the matcher sees it. Timestamps are microseconds on any common epoch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Session {
    pub pid: i32,
    pub backend_type: Option<String>,
    pub usename: Option<String>,
    pub datname: Option<String>,
    pub application_name: Option<String>,
    pub client_hostname: Option<String>,
    pub state: Option<String>,
    pub wait_event_type: Option<String>,
    pub wait_event: Option<String>,
    pub query: Option<String>,
    pub client_addr: Option<IpAddr>,
    /// -1 for a Unix-socket connection, NULL for a process with no client.
    pub client_port: Option<i32>,
    pub backend_start: Option<i64>,
    pub xact_start: Option<i64>,
    pub query_start: Option<i64>,
    pub state_change: Option<i64>,
    /// Is a `client backend`, even where the caller may not see `backend_type` (another role's
    /// session): the safe default selects only these, whatever the caller can see.
    pub client_backend: bool,
    /// Owned by a superuser, or by no role at all (PostgreSQL protects those the same way).
    pub superuser: bool,
    /// The caller may not see its details (its timestamps and address are NULL here, whatever
    /// they are): a quota cannot rank it, so a quota never makes it a victim.
    pub hidden: bool,
    /// Its place in the lock graph (read only when a filter has lock keys).
    pub locks: LockFacts,
}

/// What the matcher needs besides the session itself.
#[derive(Debug, Clone, Copy)]
pub struct MatchContext<'p> {
    /// The calling backend: never a victim (0: no caller, as in a replay).
    pub self_pid: i32,
    /// "Now" for the age keys, on the same epoch as the session timestamps.
    pub now: i64,
    /// The tools and roles that are never victims unless a filter says `include_protected`.
    pub protected: &'p Protected,
    /// Called for every session matched: a cancel point (what a filter costs to match is its
    /// writer's to choose).
    pub interrupt: fn(),
}

/// An `interrupt` for callers with nothing to check.
pub fn no_interrupt() {}

/// `pg_reaper.protected_applications` and `pg_reaper.protected_roles`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protected {
    pub applications: Vec<String>,
    pub roles: Vec<String>,
}

/// A comma-separated list of application names as a setting holds it: each trimmed; a name in
/// double quotes keeps its commas and spaces (`""` is a quote); empty items are dropped. Case
/// is kept (application names are case-sensitive).
pub fn name_list(text: &str) -> Vec<String> {
    names(text, false)
}

/// The same for role names, which fold to lower case unless quoted, as identifiers do
/// (`Backup` is the role `backup`; `"Backup"` is `Backup`).
pub fn role_list(text: &str) -> Vec<String> {
    names(text, true)
}

/// NAMEDATALEN - 1 in every supported major.
const NAME_MAX_BYTES: usize = 63;

fn names(text: &str, fold: bool) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        // PostgreSQL's list syntax skips ASCII whitespace only.
        while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        let mut name = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.next_if_eq(&'"').is_some() {
                        name.push('"');
                    } else {
                        break;
                    }
                } else {
                    name.push(c);
                }
            }
            while chars.next_if(|c| *c != ',').is_some() {}
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                name.push(c);
            }
            name = name
                .trim_end_matches(|c: char| c.is_ascii_whitespace())
                .to_string();
            if fold {
                // As PostgreSQL folds identifiers: ASCII letters only.
                name = name.to_ascii_lowercase();
            }
        }
        // PostgreSQL keeps names and application_name to NAMEDATALEN - 1 bytes, cut at a
        // character boundary: a longer entry names what the server would.
        let mut end = name.len().min(NAME_MAX_BYTES);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
        if !name.is_empty() {
            names.push(name);
        }
        if chars.next().is_none() {
            return names;
        }
    }
}

impl Protected {
    /// Whether `s` is one of the protected tools or roles.
    pub fn covers(&self, s: &Session) -> bool {
        let is_in = |list: &[String], v: &Option<String>| {
            v.as_deref().is_some_and(|v| list.iter().any(|x| x == v))
        };
        is_in(&self.applications, &s.application_name) || is_in(&self.roles, &s.usename)
    }
}

/// A validated filter.
#[derive(Debug, Clone)]
pub struct Filter {
    pub(crate) criteria: Criteria,
    pub limit: Option<u64>,
    pub order: Order,
    pub include_superusers: bool,
    pub include_protected: bool,
    /// `keep`: the first N of each group (in `order`) are spared.
    pub keep: Option<u64>,
    /// `per`: the columns that make a group for `keep` (none: one group).
    pub per: Vec<GroupField>,
    /// What its regexes count for, in bytes, against [`REGEX_BUDGET_BYTES`].
    pub regex_bytes: usize,
}

/// The columns a quota (`keep` / `per`) can group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupField {
    Usename,
    Datname,
    ApplicationName,
    ClientAddr,
}

impl GroupField {
    pub const ALL: [GroupField; 4] = [
        GroupField::Usename,
        GroupField::Datname,
        GroupField::ApplicationName,
        GroupField::ClientAddr,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GroupField::Usename => "usename",
            GroupField::Datname => "datname",
            GroupField::ApplicationName => "application_name",
            GroupField::ClientAddr => "client_addr",
        }
    }

    /// The session's value, as a group key (NULL is a group of its own, as in GROUP BY).
    pub fn value(self, s: &Session) -> Option<String> {
        match self {
            GroupField::Usename => s.usename.clone(),
            GroupField::Datname => s.datname.clone(),
            GroupField::ApplicationName => s.application_name.clone(),
            GroupField::ClientAddr => s.client_addr.map(|a| a.to_string()),
        }
    }
}

/// The text columns a filter can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TextField {
    Usename,
    Datname,
    ApplicationName,
    ClientHostname,
    State,
    BackendType,
    WaitEventType,
    WaitEvent,
    Query,
}

/// The timestamps behind the `min_*_age` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AgeField {
    State,
    Query,
    Xact,
    Backend,
    /// Since when this session waits for a lock (pg_locks.waitstart).
    Blocked,
    /// Since when the longest waiter behind this session, directly or through a chain, waits.
    Blocking,
}

/// The timestamp an order sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderKey {
    Backend,
    Xact,
    Query,
    State,
}

/// Which victims `limit` and `keep` choose, and the order of the result rows: a timestamp,
/// oldest or newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    pub key: OrderKey,
    pub newest_first: bool,
}

impl Default for Order {
    fn default() -> Order {
        Order {
            key: OrderKey::Backend,
            newest_first: false,
        }
    }
}

/// `blocking`: a session others wait for, or not, or the head of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blocking {
    Is(bool),
    /// Blocks someone and waits for nobody.
    Root,
}

/// One AND-node of the filter: the top level, an element of `any`, or `exclude`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Criteria {
    pub text: Vec<(TextField, TextMatch)>,
    pub client_addr: Option<AddrList>,
    pub pid: Option<PidMatch>,
    pub min_age: Vec<(AgeField, i64)>,
    pub blocking: Option<Blocking>,
    pub blocked: Option<bool>,
    pub min_blocked_sessions: Option<u32>,
    /// `holding_up`: its number among the filter's `holding_up` keys, and the sessions held up.
    pub holding_up: Option<(usize, Box<Criteria>)>,
    pub any: Option<Vec<Criteria>>,
    pub exclude: Option<Box<Criteria>>,
    pub all: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum TextMatch {
    Exact(String),
    OneOf(Vec<String>),
    Regex(pattern::Pattern),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PidMatch {
    One(i32),
    Many(Vec<i32>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AddrList {
    One(AddrMatch),
    Many(Vec<AddrMatch>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum AddrMatch {
    Local,
    Net(ipnet::IpNet),
}

impl TextField {
    pub const ALL: [TextField; 9] = [
        TextField::Usename,
        TextField::Datname,
        TextField::ApplicationName,
        TextField::ClientHostname,
        TextField::State,
        TextField::BackendType,
        TextField::WaitEventType,
        TextField::WaitEvent,
        TextField::Query,
    ];

    pub fn key(self) -> &'static str {
        match self {
            TextField::Usename => "usename",
            TextField::Datname => "datname",
            TextField::ApplicationName => "application_name",
            TextField::ClientHostname => "client_hostname",
            TextField::State => "state",
            TextField::BackendType => "backend_type",
            TextField::WaitEventType => "wait_event_type",
            TextField::WaitEvent => "wait_event",
            TextField::Query => "query",
        }
    }

    pub fn value(self, s: &Session) -> Option<&str> {
        match self {
            TextField::Usename => s.usename.as_deref(),
            TextField::Datname => s.datname.as_deref(),
            TextField::ApplicationName => s.application_name.as_deref(),
            TextField::ClientHostname => s.client_hostname.as_deref(),
            TextField::State => s.state.as_deref(),
            TextField::BackendType => s.backend_type.as_deref(),
            TextField::WaitEventType => s.wait_event_type.as_deref(),
            TextField::WaitEvent => s.wait_event.as_deref(),
            TextField::Query => s.query.as_deref(),
        }
    }
}

impl AgeField {
    pub const ALL: [AgeField; 6] = [
        AgeField::State,
        AgeField::Query,
        AgeField::Xact,
        AgeField::Backend,
        AgeField::Blocked,
        AgeField::Blocking,
    ];

    pub fn key(self) -> &'static str {
        match self {
            AgeField::State => "min_state_age",
            AgeField::Query => "min_query_age",
            AgeField::Xact => "min_xact_age",
            AgeField::Backend => "min_backend_age",
            AgeField::Blocked => "min_blocked_age",
            AgeField::Blocking => "min_blocking_age",
        }
    }

    pub fn value(self, s: &Session) -> Option<i64> {
        match self {
            AgeField::State => s.state_change,
            AgeField::Query => s.query_start,
            AgeField::Xact => s.xact_start,
            AgeField::Backend => s.backend_start,
            AgeField::Blocked => s.locks.wait_start,
            AgeField::Blocking => s.locks.longest_wait_behind,
        }
    }

    /// Whether the age is read from the lock graph.
    pub fn is_lock_age(self) -> bool {
        matches!(self, AgeField::Blocked | AgeField::Blocking)
    }
}

impl OrderKey {
    fn name(self) -> &'static str {
        match self {
            OrderKey::Backend => "backend",
            OrderKey::Xact => "xact",
            OrderKey::Query => "query",
            OrderKey::State => "state",
        }
    }

    pub fn value(self, s: &Session) -> Option<i64> {
        match self {
            OrderKey::Backend => s.backend_start,
            OrderKey::Xact => s.xact_start,
            OrderKey::Query => s.query_start,
            OrderKey::State => s.state_change,
        }
    }
}

impl Order {
    /// oldest_backend, newest_backend, oldest_xact, ... (the default first).
    pub fn all() -> Vec<Order> {
        [
            OrderKey::Backend,
            OrderKey::Xact,
            OrderKey::Query,
            OrderKey::State,
        ]
        .into_iter()
        .flat_map(|key| [false, true].map(|newest_first| Order { key, newest_first }))
        .collect()
    }

    pub fn name(self) -> String {
        let which = if self.newest_first {
            "newest"
        } else {
            "oldest"
        };
        format!("{which}_{}", self.key.name())
    }
}

/// What the running server can show in the columns whose exact values a filter is checked
/// against: an exact `state` or `backend_type` it can never show is a typo (or another major's
/// name) that would silently match nothing, so it is refused. The SQL layer builds this from
/// the running server; [`Vocabulary::default`] is PostgreSQL 15's, for tests and tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocabulary {
    /// The server, for messages ("PostgreSQL 17").
    pub server: String,
    /// The values `pg_stat_activity.state` can take.
    pub states: Vec<String>,
    /// The values `pg_stat_activity.backend_type` can take: the server's own process types,
    /// the background workers PostgreSQL and known extensions register, and the types of the
    /// background workers running now.
    pub backend_types: Vec<String>,
}

/// The states of PostgreSQL 14 to 17 (18 adds `starting`).
pub const STATES: &[&str] = &[
    "active",
    "idle",
    "idle in transaction",
    "idle in transaction (aborted)",
    "fastpath function call",
    "disabled",
];

/// PostgreSQL 15's own process types (GetBackendTypeDesc), as pg_stat_activity shows them.
pub const BACKEND_TYPES_15: &[&str] = &[
    "autovacuum launcher",
    "autovacuum worker",
    "client backend",
    "background worker",
    "background writer",
    "checkpointer",
    "startup",
    "walreceiver",
    "walsender",
    "walwriter",
    "archiver",
    "logger",
];

/// Background-worker types (bgw_type, which pg_stat_activity shows as backend_type) that
/// PostgreSQL itself and well-known extensions register, in any supported major.
pub const KNOWN_WORKER_TYPES: &[&str] = &[
    "parallel worker",
    "logical replication launcher",
    "logical replication worker",
    "logical replication apply worker",
    "logical replication parallel worker",
    "logical replication tablesync worker",
    "pg_cron launcher",
    WORKER_TYPE,
];

impl Default for Vocabulary {
    fn default() -> Vocabulary {
        Vocabulary {
            server: "PostgreSQL 15".into(),
            states: STATES.iter().map(|s| s.to_string()).collect(),
            backend_types: BACKEND_TYPES_15
                .iter()
                .chain(KNOWN_WORKER_TYPES)
                .map(|s| s.to_string())
                .collect(),
        }
    }
}
