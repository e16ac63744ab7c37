//! The activity snapshot: every backend, as `pg_catalog.pg_stat_activity` would show it to the
//! current role, converted into the matcher's plain [`Session`].
//!
//! It is read from the same source as `pg_stat_get_activity()` (this transaction's copy of the
//! backend status array), applying the same visibility rule, rather than through SPI: going
//! through the view costs twice as much as the hand-written query it replaces, and pg_reaper
//! promises to be no slower.

use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, CStr};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pgrx::prelude::*;
use pgrx::spi::SpiResult;

use crate::filter::Session;

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
    /// Reads the backend status anew: it is cached per transaction, so the cache is dropped first.
    pub fn take(with_lock_info: bool) -> Snapshot {
        unsafe { pg_sys::pgstat_clear_snapshot() };
        let taken_at = unsafe { pg_sys::GetCurrentTimestamp() };
        let mut names = Names::default();
        let count = unsafe { pg_sys::pgstat_fetch_stat_numbackends() };
        let mut backends: Vec<Backend> = (1..=count)
            .filter_map(|i| unsafe { pg_sys::pgstat_fetch_stat_local_beentry(i).as_ref() })
            .map(|local| read_backend(&local.backendStatus, &mut names))
            .collect();
        if with_lock_info {
            add_lock_info(&mut backends);
        }
        Snapshot { backends, taken_at }
    }
}

/// Role and database names, and the caller's right to see each role's sessions, looked up once
/// per snapshot.
#[derive(Default)]
struct Names {
    roles: HashMap<pg_sys::Oid, Option<String>>,
    databases: HashMap<pg_sys::Oid, Option<String>>,
    visible: HashMap<pg_sys::Oid, bool>,
    superuser_like: HashMap<pg_sys::Oid, bool>,
}

impl Names {
    fn role(&mut self, oid: pg_sys::Oid) -> Option<String> {
        if oid == pg_sys::InvalidOid {
            return None;
        }
        self.roles
            .entry(oid)
            .or_insert_with(|| unsafe { owned(pg_sys::GetUserNameFromId(oid, true)) })
            .clone()
    }

    fn database(&mut self, oid: pg_sys::Oid) -> Option<String> {
        if oid == pg_sys::InvalidOid {
            return None;
        }
        self.databases
            .entry(oid)
            .or_insert_with(|| unsafe { owned(pg_sys::get_database_name(oid)) })
            .clone()
    }

    /// pg_stat_activity's rule (HAS_PGSTAT_PERMISSIONS): pg_read_all_stats, or the privileges
    /// of the session's role.
    fn visible(&mut self, role: pg_sys::Oid) -> bool {
        *self.visible.entry(role).or_insert_with(|| unsafe {
            let me = pg_sys::GetUserId();
            pg_sys::has_privs_of_role(me, pg_sys::Oid::from(pg_sys::ROLE_PG_READ_ALL_STATS))
                || pg_sys::has_privs_of_role(me, role)
        })
    }

    /// PostgreSQL protects a process with no role like a superuser's (signalfuncs.c); so do we.
    fn superuser_like(&mut self, role: pg_sys::Oid) -> bool {
        *self
            .superuser_like
            .entry(role)
            .or_insert_with(|| role == pg_sys::InvalidOid || unsafe { pg_sys::superuser_arg(role) })
    }
}

/// A palloc'd C string into Rust, freed.
unsafe fn owned(ptr: *mut c_char) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    let s = CStr::from_ptr(ptr).to_string_lossy().into_owned();
    pg_sys::pfree(ptr.cast());
    Some(s)
}

unsafe fn borrowed(ptr: *const c_char) -> Option<String> {
    (!ptr.is_null()).then(|| CStr::from_ptr(ptr).to_string_lossy().into_owned())
}

fn timestamp(t: pg_sys::TimestampTz) -> Option<i64> {
    (t != 0).then_some(t)
}

fn read_backend(st: &pg_sys::PgBackendStatus, names: &mut Names) -> Backend {
    let pid = st.st_procpid;
    let mut session = Session {
        pid,
        usename: names.role(st.st_userid),
        datname: names.database(st.st_databaseid),
        application_name: unsafe { borrowed(st.st_appname) },
        client_backend: st.st_backendType == pg_sys::BackendType::B_BACKEND,
        superuser: names.superuser_like(st.st_userid),
        ..Session::default()
    };
    let mut client_addr_text = None;
    if names.visible(st.st_userid) {
        session.backend_type = backend_type(st);
        session.state = state_name(st.st_state).map(str::to_string);
        session.query = unsafe { owned(pg_sys::pgstat_clip_activity(st.st_activity_raw)) };
        (session.wait_event_type, session.wait_event) = wait_event(st);
        session.backend_start = timestamp(st.st_proc_start_timestamp);
        session.xact_start = timestamp(st.st_xact_start_timestamp);
        session.query_start = timestamp(st.st_activity_start_timestamp);
        session.state_change = timestamp(st.st_state_start_timestamp);
        let client = client(st);
        session.client_addr = client.addr;
        session.client_port = client.port;
        session.client_hostname = client.hostname;
        client_addr_text = client.addr.map(|a| a.to_string());
    } else {
        session.query = Some("<insufficient privilege>".into());
    }
    Backend {
        session,
        client_addr_text,
        started_at: timestamp(st.st_proc_start_timestamp),
    }
}

fn backend_type(st: &pg_sys::PgBackendStatus) -> Option<String> {
    unsafe {
        if st.st_backendType == pg_sys::BackendType::B_BG_WORKER {
            borrowed(pg_sys::GetBackgroundWorkerTypeByPid(st.st_procpid))
        } else {
            borrowed(pg_sys::GetBackendTypeDesc(st.st_backendType))
        }
    }
}

fn state_name(state: pg_sys::BackendState::Type) -> Option<&'static str> {
    use pg_sys::BackendState::*;
    match state {
        STATE_IDLE => Some("idle"),
        STATE_RUNNING => Some("active"),
        STATE_IDLEINTRANSACTION => Some("idle in transaction"),
        STATE_FASTPATH => Some("fastpath function call"),
        STATE_IDLEINTRANSACTION_ABORTED => Some("idle in transaction (aborted)"),
        STATE_DISABLED => Some("disabled"),
        _ => None,
    }
}

/// The wait event lives in the process's PGPROC, not in the status array.
fn wait_event(st: &pg_sys::PgBackendStatus) -> (Option<String>, Option<String>) {
    unsafe {
        let mut proc = pg_sys::BackendPidGetProc(st.st_procpid);
        if proc.is_null() && st.st_backendType != pg_sys::BackendType::B_BACKEND {
            proc = pg_sys::AuxiliaryPidGetProc(st.st_procpid);
        }
        let Some(proc) = proc.as_ref() else {
            return (None, None);
        };
        let info = std::ptr::read_volatile(&proc.wait_event_info);
        (
            borrowed(pg_sys::pgstat_get_wait_event_type(info)),
            borrowed(pg_sys::pgstat_get_wait_event(info)),
        )
    }
}

struct Client {
    addr: Option<IpAddr>,
    port: Option<i32>,
    hostname: Option<String>,
}

/// client_addr, client_port and client_hostname as pg_stat_activity reports them: an address
/// for TCP, port -1 for a Unix socket, all NULL for a process with no client.
fn client(st: &pg_sys::PgBackendStatus) -> Client {
    let none = Client {
        addr: None,
        port: None,
        hostname: None,
    };
    let sa = &st.st_clientaddr;
    let raw = unsafe {
        std::slice::from_raw_parts(
            (sa as *const pg_sys::SockAddr).cast::<u8>(),
            std::mem::size_of::<pg_sys::SockAddr>(),
        )
    };
    if raw.iter().all(|b| *b == 0) {
        return none;
    }
    let storage = (&sa.addr as *const pg_sys::sockaddr_storage).cast::<u8>();
    let (addr, port) = match i32::from(sa.addr.ss_family) {
        libc::AF_INET => {
            let sin = unsafe { &*storage.cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            (IpAddr::V4(ip), u16::from_be(sin.sin_port))
        }
        libc::AF_INET6 => {
            let sin6 = unsafe { &*storage.cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            (IpAddr::V6(ip), u16::from_be(sin6.sin6_port))
        }
        libc::AF_UNIX => {
            return Client {
                port: Some(-1),
                ..none
            }
        }
        _ => return none,
    };
    let hostname = unsafe { borrowed(st.st_clienthostname) }.filter(|h| !h.is_empty());
    Client {
        addr: Some(addr),
        port: Some(i32::from(port)),
        hostname,
    }
}

/// `blocking` and `blocked`, from `pg_blocking_pids`, which takes the lock manager's locks for
/// every backend: read only when a filter asks.
fn add_lock_info(backends: &mut [Backend]) {
    let pids: Vec<i32> = backends.iter().map(|b| b.session.pid).collect();
    // One (waiter, blocker) pair per row: plain integers, which pgrx reads without copying.
    // (An array column would be copied into the transaction's memory on every read, and a
    // grace period re-reads this every few milliseconds.)
    let pairs: Vec<(i32, i32)> = Spi::connect(|client| -> SpiResult<_> {
        let table = client.select(
            "SELECT p.pid, b.blocker \
               FROM pg_catalog.unnest($1::pg_catalog.int4[]) AS p(pid), \
                    pg_catalog.unnest(pg_catalog.pg_blocking_pids(p.pid)) AS b(blocker)",
            None,
            &[pids.into()],
        )?;
        let mut pairs = Vec::with_capacity(table.len());
        for row in table {
            pairs.push((
                row.get(1)?.unwrap_or_default(),
                row.get(2)?.unwrap_or_default(),
            ));
        }
        Ok(pairs)
    })
    .unwrap_or_else(|e| error!("pg_reaper: could not read pg_blocking_pids: {e}"));
    let waiters: HashSet<i32> = pairs.iter().map(|(waiter, _)| *waiter).collect();
    let blockers: HashSet<i32> = pairs.iter().map(|(_, blocker)| *blocker).collect();
    for b in backends {
        b.session.blocked = waiters.contains(&b.session.pid);
        b.session.blocking = blockers.contains(&b.session.pid);
    }
}
