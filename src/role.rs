//! Acting as another role for a bounded stretch of code, the way PostgreSQL itself runs
//! referential-integrity checks and maintenance commands as a table's owner.

use pgrx::prelude::*;

/// The role whose privileges the current statement has.
pub fn current() -> pg_sys::Oid {
    unsafe { pg_sys::GetUserId() }
}

/// A role's name, or its oid in brackets when it no longer exists.
pub fn name(role: pg_sys::Oid) -> String {
    let name = unsafe { pg_sys::GetUserNameFromId(role, true) };
    if name.is_null() {
        format!("[role {}]", role.to_u32())
    } else {
        unsafe { std::ffi::CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned()
    }
}

/// Runs `f` with `role`'s privileges; `restricted` also forbids it to change session state
/// (SECURITY_RESTRICTED_OPERATION). The previous role comes back even if `f` raises.
pub fn run_as<R>(role: pg_sys::Oid, restricted: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(pg_sys::Oid, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) };
        }
    }
    let (mut saved_role, mut saved_context) = (pg_sys::InvalidOid, 0i32);
    unsafe { pg_sys::GetUserIdAndSecContext(&mut saved_role, &mut saved_context) };
    let mut context = saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32;
    if restricted {
        context |= pg_sys::SECURITY_RESTRICTED_OPERATION as i32;
    }
    unsafe { pg_sys::SetUserIdAndSecContext(role, context) };
    let _restore = Restore(saved_role, saved_context);
    f()
}
