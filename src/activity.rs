//! The activity snapshot: every backend, as `pg_catalog.pg_stat_activity` would show it to the
//! current role, converted into the matcher's plain [`Session`].
//!
//! It is read from the same source as `pg_stat_get_activity()` (this transaction's copy of the
//! backend status array), applying the same visibility rule, rather than through SPI: going
//! through the view costs twice as much as the hand-written query it replaces, and pg_reaper
//! promises to be no slower. Every read of shared memory goes through `compat`, the one module
//! that knows how each PostgreSQL major lays it out.

use std::collections::HashMap;
use std::ffi::{c_char, CStr};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pgrx::prelude::*;

use crate::compat;
use crate::filter::{ChainNeeds, Session};
use crate::locks::LockGraph;

pub use crate::filter::replay::HIDDEN_QUERY;

/// One backend: what the matcher reads, the client address as PostgreSQL prints it, and what
/// is known of it even where the caller may not see it: its start time (to tell a reused pid
/// from the original).
#[derive(Debug, Clone)]
pub struct Backend {
    pub session: Session,
    pub client_addr_text: Option<String>,
    pub started_at: Option<i64>,
    /// The caller may not see this session's details: the matcher sees NULLs, the result row
    /// shows pg_stat_activity's placeholder.
    pub hidden: bool,
}

impl AsRef<Session> for Backend {
    fn as_ref(&self) -> &Session {
        &self.session
    }
}

impl AsMut<Session> for Backend {
    fn as_mut(&mut self) -> &mut Session {
        &mut self.session
    }
}

/// A fresh read of every backend, with the time it was taken (PostgreSQL's microseconds), and
/// the lock graph it was matched with, if any.
pub struct Snapshot {
    pub backends: Vec<Backend>,
    pub taken_at: i64,
    pub locks: Option<LockGraph>,
    /// Each process's PGPROC slot as the snapshot found it.
    pub procs: compat::ProcsByPid,
}

/// Whether a snapshot reads the lock graph.
#[derive(Debug, Clone, Copy)]
pub enum LockInfo<'g> {
    /// The filter has no lock key.
    Skip,
    /// A fresh look at the lock manager, and what the chains must work out.
    Read(ChainNeeds),
    /// A recent look, reused (the escalation's grace period polls every few milliseconds, and
    /// asking the lock manager that often would slow everyone's locking).
    Reuse(&'g LockGraph),
}

impl LockInfo<'_> {
    pub fn fresh(needs: Option<ChainNeeds>) -> LockInfo<'static> {
        match needs {
            Some(needs) => LockInfo::Read(needs),
            None => LockInfo::Skip,
        }
    }
}

impl Snapshot {
    /// Reads the backend status anew (its copy is cached per transaction, so that copy, and
    /// only that one, is dropped first), then the wait events from each process's PGPROC, and,
    /// when the filter asks, the lock graph from one look at the lock manager.
    pub fn take(lock_info: LockInfo) -> Snapshot {
        compat::clear_activity_snapshot();
        // SAFETY: reads the clock.
        let taken_at = unsafe { pg_sys::GetCurrentTimestamp() };
        let procs = compat::ProcsByPid::read();
        let mut names = Names::default();
        let count = compat::local_backend_count();
        let mut backends: Vec<Backend> = (1..=count)
            .filter_map(compat::local_backend_status)
            .map(|st| read_backend(&st, &procs, &mut names))
            .collect();
        let locks = match lock_info {
            LockInfo::Skip => None,
            LockInfo::Read(needs) => Some(LockGraph::read(&procs, needs)),
            LockInfo::Reuse(graph) => Some(graph.clone()),
        };
        if let Some(graph) = &locks {
            for b in &mut backends {
                graph.describe(&mut b.session);
            }
        }
        Snapshot {
            backends,
            taken_at,
            locks,
            procs,
        }
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
            // SAFETY: a syscache lookup; NULL (no such role) is handled by `owned`.
            .or_insert_with(|| unsafe { owned(pg_sys::GetUserNameFromId(oid, true)) })
            .clone()
    }

    fn database(&mut self, oid: pg_sys::Oid) -> Option<String> {
        if oid == pg_sys::InvalidOid {
            return None;
        }
        self.databases
            .entry(oid)
            // SAFETY: a syscache lookup; NULL (no such database) is handled by `owned`.
            .or_insert_with(|| unsafe { owned(pg_sys::get_database_name(oid)) })
            .clone()
    }

    /// pg_stat_activity's rule: pg_read_all_stats, or the privileges of the session's role.
    fn visible(&mut self, role: pg_sys::Oid) -> bool {
        *self
            .visible
            .entry(role)
            .or_insert_with(|| compat::may_see_sessions_of(role))
    }

    /// PostgreSQL protects a process with no role like a superuser's (signalfuncs.c); so do we.
    fn superuser_like(&mut self, role: pg_sys::Oid) -> bool {
        *self.superuser_like.entry(role).or_insert_with(|| {
            // SAFETY: a syscache lookup on a role oid.
            role == pg_sys::InvalidOid || unsafe { pg_sys::superuser_arg(role) }
        })
    }
}

/// A palloc'd C string into Rust, freed.
///
/// # Safety
/// `ptr` is NULL or a palloc'd, NUL-terminated string that nothing else frees.
// SAFETY: an unsafe fn because of that contract; every caller passes what PostgreSQL palloc'd.
unsafe fn owned(ptr: *mut c_char) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: as the caller promises.
    let s = unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: palloc'd, and ours alone.
    unsafe { pg_sys::pfree(ptr.cast()) };
    Some(s)
}

/// # Safety
/// `ptr` is NULL or a NUL-terminated string that lives for the call.
// SAFETY: an unsafe fn because of that contract; callers pass status-array fields or names
// PostgreSQL keeps for the life of the process.
unsafe fn borrowed(ptr: *const c_char) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: as the caller promises.
    let s = unsafe { CStr::from_ptr(ptr) };
    Some(s.to_string_lossy().into_owned())
}

fn timestamp(t: pg_sys::TimestampTz) -> Option<i64> {
    (t != 0).then_some(t)
}

/// One entry of this transaction's copy of the status array (backend-local memory, written
/// once by `pgstat_read_current_status`, so a plain reference is sound).
fn read_backend(
    st: &pg_sys::PgBackendStatus,
    procs: &compat::ProcsByPid,
    names: &mut Names,
) -> Backend {
    let pid = st.st_procpid;
    let mut session = Session {
        pid,
        usename: names.role(st.st_userid),
        datname: names.database(st.st_databaseid),
        // SAFETY: the copy's strings live in the same transaction-lifetime copy.
        application_name: unsafe { borrowed(st.st_appname) },
        client_backend: st.st_backendType == pg_sys::BackendType::B_BACKEND,
        superuser: names.superuser_like(st.st_userid),
        ..Session::default()
    };
    let mut client_addr_text = None;
    let hidden = !names.visible(st.st_userid);
    session.hidden = hidden;
    // What the caller may not see stays NULL here, so that no filter can match on it; the
    // result row shows pg_stat_activity's placeholder instead (`HIDDEN_QUERY`).
    if !hidden {
        session.backend_type = backend_type(st);
        session.state = compat::state_name(st.st_state).map(str::to_string);
        // SAFETY: pgstat_clip_activity copies (and clips) the copy's query text into palloc'd
        // memory that `owned` frees.
        session.query = unsafe { owned(pg_sys::pgstat_clip_activity(st.st_activity_raw)) };
        (session.wait_event_type, session.wait_event) = match procs.wait_event_info(pid) {
            Some(info) => compat::wait_event_names(info),
            None => (None, None),
        };
        session.backend_start = timestamp(st.st_proc_start_timestamp);
        session.xact_start = timestamp(st.st_xact_start_timestamp);
        session.query_start = timestamp(st.st_activity_start_timestamp);
        session.state_change = timestamp(st.st_state_start_timestamp);
        let client = client(st);
        session.client_addr = client.addr;
        session.client_port = client.port;
        session.client_hostname = client.hostname;
        client_addr_text = client.addr.map(|a| a.to_string());
    }
    Backend {
        session,
        client_addr_text,
        started_at: timestamp(st.st_proc_start_timestamp),
        hidden,
    }
}

fn backend_type(st: &pg_sys::PgBackendStatus) -> Option<String> {
    // SAFETY: both return static strings or NULL.
    unsafe {
        if st.st_backendType == pg_sys::BackendType::B_BG_WORKER {
            borrowed(pg_sys::GetBackgroundWorkerTypeByPid(st.st_procpid))
        } else {
            borrowed(pg_sys::GetBackendTypeDesc(st.st_backendType))
        }
    }
}

struct Client {
    addr: Option<IpAddr>,
    port: Option<i32>,
    hostname: Option<String>,
}

/// client_addr, client_port and client_hostname as pg_stat_activity reports them: an address
/// for TCP, port -1 for a Unix socket, all NULL for a process with no client (an all-zero
/// address, whose family is 0) or an unknown family.
fn client(st: &pg_sys::PgBackendStatus) -> Client {
    let none = Client {
        addr: None,
        port: None,
        hostname: None,
    };
    let storage: *const pg_sys::sockaddr_storage = &st.st_clientaddr.addr;
    // SAFETY: the family field is at the start of every sockaddr; the storage is large and
    // aligned enough for each of the structures it is read as, and was written whole.
    let (addr, port) = match i32::from(unsafe { (*storage).ss_family }) {
        libc::AF_INET => {
            // SAFETY: an AF_INET address is a sockaddr_in, which fits in the storage.
            let sin = unsafe { storage.cast::<libc::sockaddr_in>().read() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            (IpAddr::V4(ip), u16::from_be(sin.sin_port))
        }
        libc::AF_INET6 => {
            // SAFETY: an AF_INET6 address is a sockaddr_in6, which fits in the storage.
            let sin6 = unsafe { storage.cast::<libc::sockaddr_in6>().read() };
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
    // SAFETY: the copy's strings live in the same transaction-lifetime copy.
    let hostname = unsafe { borrowed(st.st_clienthostname) }.filter(|h| !h.is_empty());
    Client {
        addr: Some(addr),
        port: Some(i32::from(port)),
        hostname,
    }
}
