//! Replay: a filter against sessions given as JSON objects with pg_stat_activity's column
//! names (what `SELECT jsonb_agg(a) FROM pg_stat_activity a` produces), for
//! `reaper.test_filter`. The sessions become the same [`Session`]s the live path builds and are
//! matched by the same code, lock chains included ([`LockChains`]), so a policy can be proved
//! on an incident's saved pg_stat_activity.
//!
//! Besides pg_stat_activity's columns, a session object may carry:
//! - `blocking_pids` (an array of pids, `pg_blocking_pids(pid)`) and `waitstart` (a timestamp,
//!   `pg_locks.waitstart` of its waiting lock): needed when the filter has lock keys;
//! - `superuser` (whether its role is a superuser, `pg_roles.rolsuper`); without it a session
//!   with no `usesysid` counts as a superuser's, as the live path counts a process with no role;
//! - `now` (a timestamp, the moment of the capture), unless `now` is given apart.
//!
//! A row of another role's session as pg_stat_activity shows it (query `<insufficient
//! privilege>`) is matched as the live path matches it: the hidden columns are NULL, and, if it
//! has a role, it is taken for a client backend (the live path knows the hidden type; a
//! background worker running as a role is the one case a replay cannot tell).

use std::net::IpAddr;
use std::str::FromStr;

use serde_json::{Map, Value};

use super::{Filter, LockChains, MatchContext, Protected, Session, WaitingProcess, Waits};

/// What pg_stat_activity shows in `query` for a session the caller may not see.
pub const HIDDEN_QUERY: &str = "<insufficient privilege>";

/// Microseconds from 1970 to 2000 (PostgreSQL's epoch): replayed timestamps are on
/// PostgreSQL's epoch, as the live path's are.
const POSTGRES_EPOCH_US: i64 = 946_684_800_000_000;

/// Why a set of sessions cannot be replayed; shown with SQLSTATE 22023.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("sessions must be a JSON array of pg_stat_activity rows, not {0}")]
    NotAnArray(&'static str),
    #[error("sessions[{index}] must be a JSON object (a pg_stat_activity row), not {found}")]
    NotAnObject { index: usize, found: &'static str },
    #[error("sessions[{index}].{field} must be {expected}, not {found}")]
    WrongType {
        index: usize,
        field: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("sessions[{index}] has no pid")]
    NoPid { index: usize },
    #[error("sessions[{index}].{field}: {value:?} is not a timestamp ({reason})")]
    BadTimestamp {
        index: usize,
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("sessions[{index}].client_addr: {value:?} is not an IP address")]
    BadAddress { index: usize, value: String },
    #[error("sessions[{index}] has no \"blocking_pids\": the filter's lock keys need each session's pg_blocking_pids(pid) (and \"waitstart\" for the lock ages)")]
    NoLockInfo { index: usize },
    #[error("sessions[{index}] has no \"now\": the filter's age keys need the moment of the capture, as a \"now\" field or test_filter's third argument")]
    NoNow { index: usize },
    #[error("sessions has {count} rows; the limit is {max}")]
    TooMany { count: usize, max: usize },
    #[error("sessions has {count} blocking_pids entries in all; the limit is {max}")]
    TooManyWaits { count: usize, max: usize },
    #[error("sessions is too large: {count} {what}; the limit is {max}")]
    TooLarge {
        what: &'static str,
        count: usize,
        max: usize,
    },
}

/// Sessions in one replay, at most (pg_stat_activity has one row per connection; a capture
/// of 16,384 is a very large server).
pub const MAX_SESSIONS: usize = 16_384;

/// `blocking_pids` entries in all sessions together, at most (a queue of about 1,400
/// sessions behind each other, every one blocked by every one ahead).
pub const MAX_WAITS: usize = 1_000_000;

/// `sessions` is parsed whole into this process's memory, where running out would abort the
/// backend rather than raise an ERROR; so its shape is bounded before it is parsed, which
/// bounds that memory to a few hundred MB at worst: JSON values in all, objects (a row each),
/// arrays (a `blocking_pids` each, and the whole), and fields of objects (pg_stat_activity has
/// about 30 columns).
pub const MAX_SESSIONS_VALUES: usize = 2_000_000;
pub const MAX_SESSIONS_OBJECTS: usize = MAX_SESSIONS;
pub const MAX_SESSIONS_ARRAYS: usize = MAX_SESSIONS + 1;
pub const MAX_SESSIONS_FIELDS: usize = MAX_SESSIONS * 64;

/// The text of `sessions`, at most (4 KiB a row for MAX_SESSIONS rows).
pub const MAX_SESSIONS_BYTES: usize = 64 * 1024 * 1024;

/// One string of `sessions`, at most, as written in JSON: the longest query text
/// pg_stat_activity can hold (track_activity_query_size's maximum) with room for its escapes.
/// A filter's regexes are linear in the text they scan; this bounds the text.
pub const MAX_SESSIONS_STRING_BYTES: usize = 2 * 1024 * 1024;

/// Refuses a `sessions` text over the bounds above, before it is parsed. The counts are upper
/// bounds, read without parsing, outside strings: values, one plus one after every comma and
/// every opening bracket; objects, every `{`; arrays, every `[`; fields, every `:`.
pub fn check_size(text: &str) -> Result<(), ReplayError> {
    let (mut values, mut objects, mut arrays, mut fields) = (1usize, 0usize, 0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    let (mut string_bytes, mut longest) = (0usize, 0usize);
    for &b in text.as_bytes() {
        if in_string {
            string_bytes += 1;
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    in_string = false;
                    longest = longest.max(string_bytes);
                }
                _ => {}
            }
        } else {
            match b {
                b'"' => (in_string, string_bytes) = (true, 0),
                b',' => values += 1,
                b'[' => (values, arrays) = (values + 1, arrays + 1),
                b'{' => (values, objects) = (values + 1, objects + 1),
                b':' => fields += 1,
                _ => {}
            }
        }
    }
    for (what, count, max) in [
        ("JSON values", values, MAX_SESSIONS_VALUES),
        ("objects", objects, MAX_SESSIONS_OBJECTS),
        ("arrays", arrays, MAX_SESSIONS_ARRAYS),
        ("object fields", fields, MAX_SESSIONS_FIELDS),
        (
            "bytes in one string",
            longest.max(string_bytes),
            MAX_SESSIONS_STRING_BYTES,
        ),
    ] {
        if count > max {
            return Err(ReplayError::TooLarge { what, count, max });
        }
    }
    Ok(())
}

/// One replayed session: its matcher view, and its "now", if it has one.
#[derive(Debug, Clone)]
pub struct Replayed {
    pub session: Session,
    pub now: Option<i64>,
}

impl AsRef<Session> for Replayed {
    fn as_ref(&self) -> &Session {
        &self.session
    }
}

impl AsMut<Session> for Replayed {
    fn as_mut(&mut self) -> &mut Session {
        &mut self.session
    }
}

/// For each session, in the order given: its pid and whether the filter selects it as a
/// victim (after `keep` and `limit`). `now` (PostgreSQL microseconds) overrides the sessions'
/// own `now` fields.
/// `interrupt` is called every few thousand steps of the lock-chain walk and for every session
/// matched (a cancel point).
pub fn replay(
    filter: &Filter,
    sessions: &Value,
    now: Option<i64>,
    protected: &Protected,
    interrupt: fn(),
) -> Result<Vec<(i32, bool)>, ReplayError> {
    let items = match sessions {
        Value::Array(items) => items,
        other => return Err(ReplayError::NotAnArray(kind(other))),
    };
    if items.len() > MAX_SESSIONS {
        return Err(ReplayError::TooMany {
            count: items.len(),
            max: MAX_SESSIONS,
        });
    }
    let needs_locks = filter.needs_lock_info();
    let mut replayed = Vec::with_capacity(items.len());
    // Each row's pg_blocking_pids and waitstart, for the lock keys.
    let mut lock_rows: Vec<(usize, Vec<i32>, Option<i64>)> = Vec::new();
    let mut waits = 0usize;
    // Lock groups (a parallel query's leader and workers, by leader_pid): a group waits since
    // its first member began to, as the live path counts it.
    let mut leaders: Vec<Option<i32>> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let object = item.as_object().ok_or(ReplayError::NotAnObject {
            index,
            found: kind(item),
        })?;
        let r = session_from_json(index, object)?;
        if filter.needs_now() && now.or(r.now).is_none() {
            return Err(ReplayError::NoNow { index });
        }
        // Only a parallel query's workers share their leader's locks; a parallel apply worker
        // of logical replication (16 and later) also names a leader_pid, but is no lock group.
        let leader = match object.get("leader_pid") {
            Some(Value::Number(n)) => n.as_i64().and_then(|p| i32::try_from(p).ok()),
            _ => None,
        };
        // (A capture without the column keeps every leader_pid.)
        let parallel_worker = match object.get("backend_type") {
            Some(Value::String(t)) => t == "parallel worker",
            _ => true,
        };
        leaders.push(leader.filter(|_| parallel_worker));
        match lock_fields(index, object)? {
            Some((blocked_by, wait_start)) => {
                waits += blocked_by.len();
                if waits > MAX_WAITS {
                    return Err(ReplayError::TooManyWaits {
                        count: waits,
                        max: MAX_WAITS,
                    });
                }
                lock_rows.push((replayed.len(), blocked_by, wait_start))
            }
            None if needs_locks => return Err(ReplayError::NoLockInfo { index }),
            None => {}
        }
        replayed.push(r);
    }
    let mut chains_for_holding_up = None;
    if needs_locks {
        // The waits in the chains' own form: each waiting row (its own group's pids taken
        // out of its list) counts as a session behind its blockers, in its lock group.
        let group_of = |i: usize| leaders[i].unwrap_or(replayed[i].session.pid);
        let mut input = Waits::default();
        for (i, blocked_by, wait_start) in lock_rows {
            let group = group_of(i);
            let blockers: Vec<i32> = blocked_by.into_iter().filter(|&b| b != group).collect();
            if blockers.is_empty() {
                continue;
            }
            input.waiting.push(WaitingProcess {
                pid: replayed[i].session.pid,
                group,
                wait_start,
            });
            input.lists.push((group, blockers));
        }
        let needs = filter.chain_needs().unwrap_or_default();
        let chains = LockChains::new(input, needs, &mut || interrupt());
        for r in &mut replayed {
            r.session.locks = chains.facts(r.session.pid);
        }
        chains_for_holding_up = Some(chains);
    }
    // One "now" for the whole capture: the argument, or the first session's (a capture taken
    // in one statement has the same now() in every row).
    let now = now
        .or_else(|| replayed.iter().find_map(|r| r.now))
        .unwrap_or(0);
    let ctx = MatchContext {
        self_pid: 0,
        now,
        protected,
        interrupt,
    };
    if let Some(chains) = &chains_for_holding_up {
        filter.mark_holding_up(&mut replayed, &ctx, chains);
    }
    let chosen = filter.select(&replayed, &ctx).victims;
    let mut matched = vec![false; replayed.len()];
    for i in chosen {
        matched[i] = true;
    }
    Ok(replayed
        .iter()
        .zip(matched)
        .map(|(r, m)| (r.session.pid, m))
        .collect())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn session_from_json(index: usize, o: &Map<String, Value>) -> Result<Replayed, ReplayError> {
    let wrong = |field: &'static str, expected: &'static str, v: &Value| ReplayError::WrongType {
        index,
        field,
        expected,
        found: kind(v).to_string(),
    };
    let text = |field: &'static str| -> Result<Option<String>, ReplayError> {
        match o.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(wrong(field, "a string or null", v)),
        }
    };
    let int = |field: &'static str| -> Result<Option<i32>, ReplayError> {
        match o.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .and_then(|v| i32::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| wrong(field, "a 32-bit integer or null", &Value::Number(n.clone()))),
            Some(v) => Err(wrong(field, "an integer or null", v)),
        }
    };
    let time = |field: &'static str| -> Result<Option<i64>, ReplayError> {
        match o.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => {
                parse_timestamp(s)
                    .map(Some)
                    .map_err(|reason| ReplayError::BadTimestamp {
                        index,
                        field,
                        value: s.chars().take(100).collect(),
                        reason,
                    })
            }
            Some(v) => Err(wrong(field, "a timestamp string or null", v)),
        }
    };
    let pid = int("pid")?.ok_or(ReplayError::NoPid { index })?;
    let mut query = text("query")?;
    let hidden = query.as_deref() == Some(HIDDEN_QUERY);
    if hidden {
        query = None;
    }
    let backend_type = text("backend_type")?;
    let client_addr = match text("client_addr")? {
        None => None,
        Some(a) => Some(parse_addr(&a).ok_or(ReplayError::BadAddress { index, value: a })?),
    };
    let superuser = match o.get("superuser") {
        Some(Value::Bool(b)) => *b,
        None | Some(Value::Null) => matches!(o.get("usesysid"), None | Some(Value::Null)),
        Some(v) => return Err(wrong("superuser", "a boolean or null", v)),
    };
    // A hidden row's type is hidden too; a client backend always has a role, so a hidden row
    // with one is taken for a client backend (the live path knows; a replay must guess).
    let has_role = !matches!(o.get("usesysid"), None | Some(Value::Null));
    let session = Session {
        pid,
        client_backend: backend_type.as_deref() == Some("client backend")
            || (hidden && backend_type.is_none() && has_role),
        backend_type,
        usename: text("usename")?,
        datname: text("datname")?,
        application_name: text("application_name")?,
        client_hostname: text("client_hostname")?,
        state: text("state")?,
        wait_event_type: text("wait_event_type")?,
        wait_event: text("wait_event")?,
        query,
        client_addr,
        client_port: int("client_port")?,
        backend_start: time("backend_start")?,
        xact_start: time("xact_start")?,
        query_start: time("query_start")?,
        state_change: time("state_change")?,
        superuser,
        hidden,
        locks: Default::default(),
    };
    Ok(Replayed {
        session,
        now: time("now")?,
    })
}

/// `blocking_pids` and `waitstart`, if the session object has `blocking_pids` (NULL counts as
/// having none, as pg_blocking_pids of a process that does not wait).
#[allow(clippy::type_complexity)]
fn lock_fields(
    index: usize,
    o: &Map<String, Value>,
) -> Result<Option<(Vec<i32>, Option<i64>)>, ReplayError> {
    let wrong = |field: &'static str, expected: &'static str, v: &Value| ReplayError::WrongType {
        index,
        field,
        expected,
        found: kind(v).to_string(),
    };
    let blocked_by = match o.get("blocking_pids") {
        None => return Ok(None),
        Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_i64()
                    .and_then(|p| i32::try_from(p).ok())
                    .ok_or_else(|| wrong("blocking_pids", "an array of pids", v))
            })
            .collect::<Result<_, _>>()?,
        Some(v) => return Err(wrong("blocking_pids", "an array of pids or null", v)),
    };
    let wait_start = match o.get("waitstart") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            Some(
                parse_timestamp(s).map_err(|reason| ReplayError::BadTimestamp {
                    index,
                    field: "waitstart",
                    value: s.chars().take(100).collect(),
                    reason,
                })?,
            )
        }
        Some(v) => return Err(wrong("waitstart", "a timestamp string or null", v)),
    };
    Ok(Some((blocked_by, wait_start)))
}

/// An inet as PostgreSQL prints it: an address, or an address with a mask length.
fn parse_addr(text: &str) -> Option<IpAddr> {
    IpAddr::from_str(text)
        .ok()
        .or_else(|| Some(ipnet::IpNet::from_str(text).ok()?.addr()))
}

/// A timestamp with time zone as PostgreSQL writes it in JSON (`2026-11-25T17:55:55.123456+00:00`)
/// or in text (`2026-11-25 17:55:55.123456+00`), to microseconds since 2000-01-01 UTC. The zone
/// is `Z` or an offset `±HH`, `±HH:MM` or `±HH:MM:SS`; a timestamp without one is refused
/// (its zone would be a guess).
pub fn parse_timestamp(text: &str) -> Result<i64, &'static str> {
    let b = text.trim().as_bytes();
    let digits = |from: usize, n: usize| -> Result<i64, &'static str> {
        let part = b.get(from..from + n).ok_or("too short")?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err("expected digits");
        }
        Ok(part.iter().fold(0i64, |v, d| v * 10 + i64::from(d - b'0')))
    };
    let expect = |at: usize, chars: &[u8]| -> Result<(), &'static str> {
        match b.get(at) {
            Some(c) if chars.contains(c) => Ok(()),
            _ => Err("expected YYYY-MM-DD HH:MM:SS with a time zone"),
        }
    };
    let year = digits(0, 4)?;
    expect(4, b"-")?;
    let month = digits(5, 2)?;
    expect(7, b"-")?;
    let day = digits(8, 2)?;
    expect(10, b"T ")?;
    let hour = digits(11, 2)?;
    expect(13, b":")?;
    let minute = digits(14, 2)?;
    expect(16, b":")?;
    let second = digits(17, 2)?;
    let mut at = 19;
    let mut micros = 0i64;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        let frac = &b[start..at];
        if frac.is_empty() || frac.len() > 6 {
            return Err("expected 1 to 6 digits of fractional seconds");
        }
        micros = frac.iter().fold(0i64, |v, d| v * 10 + i64::from(d - b'0'))
            * 10i64.pow(6 - frac.len() as u32);
    }
    let offset_seconds = match b.get(at) {
        Some(b'Z') if at + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let h = digits(at + 1, 2)?;
            let mut rest = at + 3;
            let mut m = 0;
            let mut s = 0;
            if b.get(rest) == Some(&b':') {
                m = digits(rest + 1, 2)?;
                rest += 3;
                if b.get(rest) == Some(&b':') {
                    s = digits(rest + 1, 2)?;
                    rest += 3;
                }
            }
            if rest != b.len() || h > 15 || m > 59 || s > 59 {
                return Err("expected a time zone offset such as +00:00");
            }
            let total = h * 3600 + m * 60 + s;
            if sign == b'-' {
                -total
            } else {
                total
            }
        }
        _ => return Err("expected a time zone (Z or an offset such as +00:00) at the end"),
    };
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err("no such date or time");
    }
    let days = days_from_civil(year, month, day);
    let local = ((days * 24 + hour) * 60 + minute) * 60 + second;
    Ok((local - offset_seconds) * 1_000_000 + micros - POSTGRES_EPOCH_US)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
