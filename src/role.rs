//! Roles: who is acting, their names, and acting as another role for a bounded stretch of code,
//! the way PostgreSQL itself runs referential-integrity checks and maintenance commands as a
//! table's owner. Lookups go through the syscache, never SQL, so no search_path is involved.

use pgrx::prelude::*;

/// The role whose privileges the current statement has.
pub fn current() -> pg_sys::Oid {
    // SAFETY: reads backend-local state.
    unsafe { pg_sys::GetUserId() }
}

/// A role's name, if the role exists.
fn lookup(role: pg_sys::Oid) -> Option<String> {
    // SAFETY: a syscache lookup that returns NULL (noerr) or a palloc'd copy of the name, which
    // is copied into Rust and freed.
    unsafe {
        let name = pg_sys::GetUserNameFromId(role, true);
        if name.is_null() {
            return None;
        }
        let owned = std::ffi::CStr::from_ptr(name)
            .to_string_lossy()
            .into_owned();
        pg_sys::pfree(name.cast());
        Some(owned)
    }
}

/// A role's name, or its oid in brackets when it no longer exists.
pub fn name(role: pg_sys::Oid) -> String {
    lookup(role).unwrap_or_else(|| format!("[role {}]", role.to_u32()))
}

/// Whether the role exists.
pub fn exists(role: pg_sys::Oid) -> bool {
    lookup(role).is_some()
}

/// Runs `f` with `role`'s privileges; `restricted` also forbids it to change session state
/// (SECURITY_RESTRICTED_OPERATION). The previous role comes back even if `f` raises.
pub fn run_as<R>(role: pg_sys::Oid, restricted: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(pg_sys::Oid, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores the user id and security context saved below.
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) };
        }
    }
    let (mut saved_role, mut saved_context) = (pg_sys::InvalidOid, 0i32);
    // SAFETY: writes the current user id and security context into the two locals.
    unsafe { pg_sys::GetUserIdAndSecContext(&mut saved_role, &mut saved_context) };
    let mut context = saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32;
    if restricted {
        context |= pg_sys::SECURITY_RESTRICTED_OPERATION as i32;
    }
    // SAFETY: the same call PostgreSQL makes to run code as a table owner; undone by Restore,
    // and by transaction abort if an error escapes.
    unsafe { pg_sys::SetUserIdAndSecContext(role, context) };
    let _restore = Restore(saved_role, saved_context);
    f()
}
