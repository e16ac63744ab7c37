//! The activity snapshot: `pg_catalog.pg_stat_activity`, read through SPI as the current role
//! (so it sees exactly what that role may see) and converted into the matcher's plain
//! [`Session`] struct.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use pgrx::prelude::*;
use pgrx::spi::SpiResult;

use crate::filter::Session;

/// Columns in the order the result rows list them; `usesysid` feeds the superuser check.
const SNAPSHOT_SQL: &str = "\
SELECT a.pid, a.backend_type, a.usename::pg_catalog.text, a.datname::pg_catalog.text,
       a.application_name, a.client_hostname, a.state, a.wait_event_type, a.wait_event,
       a.query, a.client_addr::pg_catalog.text, a.client_port, a.backend_start, a.xact_start,
       a.query_start, a.state_change, a.usesysid";

/// `pg_blocking_pids` takes the lock manager's locks for every row, so it is only read when a
/// filter asks about blocking.
const BLOCKING_SQL: &str = ", pg_catalog.pg_blocking_pids(a.pid)";

const FROM_SQL: &str = " FROM pg_catalog.pg_stat_activity a";

/// One backend: what the matcher reads, the client address as PostgreSQL prints it, and its
/// start time even where the caller may not see it, to tell a reused pid from the original.
#[derive(Debug, Clone)]
pub struct Backend {
    pub session: Session,
    pub client_addr_text: Option<String>,
    pub started_at: Option<i64>,
}

impl AsRef<Session> for Backend {
    fn as_ref(&self) -> &Session {
        &self.session
    }
}

/// A fresh read of every backend, with the time it was taken (PostgreSQL's microseconds).
pub struct Snapshot {
    pub backends: Vec<Backend>,
    pub taken_at: i64,
}

impl Snapshot {
    /// Reads pg_stat_activity anew: it is cached per transaction, so the cache is dropped first.
    pub fn take(with_lock_info: bool) -> Snapshot {
        unsafe { pg_sys::pgstat_clear_snapshot() };
        let taken_at = unsafe { pg_sys::GetCurrentTimestamp() };
        let sql = if with_lock_info {
            format!("{SNAPSHOT_SQL}{BLOCKING_SQL}{FROM_SQL}")
        } else {
            format!("{SNAPSHOT_SQL}{FROM_SQL}")
        };
        let backends = Spi::connect(|client| -> SpiResult<Vec<Backend>> {
            let table = client.select(&sql, None, &[])?;
            let mut backends = Vec::with_capacity(table.len());
            let mut blocked_by: Vec<Vec<i32>> = Vec::new();
            for row in table {
                let ts = |i: usize| -> SpiResult<Option<i64>> {
                    Ok(row.get::<TimestampWithTimeZone>(i)?.map(i64::from))
                };
                let client_addr_text: Option<String> = row.get(11)?;
                let usesysid: Option<pg_sys::Oid> = row.get(17)?;
                let session = Session {
                    pid: row.get(1)?.unwrap_or_default(),
                    backend_type: row.get(2)?,
                    usename: row.get(3)?,
                    datname: row.get(4)?,
                    application_name: row.get(5)?,
                    client_hostname: row.get(6)?,
                    state: row.get(7)?,
                    wait_event_type: row.get(8)?,
                    wait_event: row.get(9)?,
                    query: row.get(10)?,
                    client_addr: client_addr_text
                        .as_deref()
                        .and_then(|a| a.parse::<IpAddr>().ok()),
                    client_port: row.get(12)?,
                    backend_start: ts(13)?,
                    xact_start: ts(14)?,
                    query_start: ts(15)?,
                    state_change: ts(16)?,
                    client_backend: false, // from the status array below
                    superuser: is_superuser_like(usesysid),
                    blocking: false,
                    blocked: false,
                };
                if with_lock_info {
                    let pids: Vec<i32> = row.get::<Vec<i32>>(18)?.unwrap_or_default();
                    blocked_by.push(pids);
                }
                backends.push(Backend {
                    session,
                    client_addr_text,
                    started_at: None,
                });
            }
            // The query above loaded this transaction's copy of the backend status array; it
            // knows every backend's type and start, which pg_stat_activity hides from roles
            // without rights over it. Used only to restrict and to identify, never shown.
            let status = backend_status();
            for b in backends.iter_mut() {
                if let Some(&(client, started_at)) = status.get(&b.session.pid) {
                    b.session.client_backend = client;
                    b.started_at = Some(started_at);
                }
            }
            if with_lock_info {
                let blockers: HashSet<i32> = blocked_by.iter().flatten().copied().collect();
                for (b, waits_for) in backends.iter_mut().zip(&blocked_by) {
                    b.session.blocked = !waits_for.is_empty();
                    b.session.blocking = blockers.contains(&b.session.pid);
                }
            }
            Ok(backends)
        })
        .unwrap_or_else(|e| error!("pg_reaper: could not read pg_stat_activity: {e}"));
        Snapshot { backends, taken_at }
    }
}

/// pid → (is a client backend, start time), from the status array pg_stat_activity reads.
fn backend_status() -> HashMap<i32, (bool, i64)> {
    let count = unsafe { pg_sys::pgstat_fetch_stat_numbackends() };
    (1..=count)
        .filter_map(|i| unsafe { pg_sys::pgstat_fetch_stat_local_beentry(i).as_ref() })
        .map(|local| {
            let st = &local.backendStatus;
            let client = st.st_backendType == pg_sys::BackendType::B_BACKEND;
            (st.st_procpid, (client, st.st_proc_start_timestamp))
        })
        .collect()
}

/// PostgreSQL protects a process with no role like a superuser's (signalfuncs.c); so do we.
fn is_superuser_like(role: Option<pg_sys::Oid>) -> bool {
    match role {
        Some(oid) if oid != pg_sys::InvalidOid => unsafe { pg_sys::superuser_arg(oid) },
        _ => true,
    }
}
