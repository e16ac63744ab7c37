//! Raising errors with the SQLSTATE a user can act on. Bad input is 22023 and is always raised
//! before anything is signalled; the other codes say what is missing or forbidden.

use pgrx::prelude::*;

/// Bad input: SQLSTATE 22023 (invalid_parameter_value), raised before anything is signalled.
pub fn refuse(message: &str) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message)
}

/// An ERROR with `code`.
pub fn raise(code: PgSqlErrorCode, message: &str) -> ! {
    ereport!(PgLogLevel::ERROR, code, message.to_string());
    unreachable!("ereport(ERROR) returned")
}

/// An ERROR with `code` and a HINT.
pub fn raise_with_hint(code: PgSqlErrorCode, message: &str, hint: &str) -> ! {
    ereport!(
        PgLogLevel::ERROR,
        code,
        message.to_string(),
        hint.to_string()
    );
    unreachable!("ereport(ERROR) returned")
}
