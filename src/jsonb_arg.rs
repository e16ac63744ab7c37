//! A `jsonb` argument read as its text. pgrx's own `JsonB` parses with serde_json's defaults
//! and panics on what they refuse (nesting deeper than 128, numbers beyond f64); reading the
//! text lets the filter module refuse those with a proper 22023 and its own size bounds.

use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};
use pgrx::prelude::*;
use pgrx::{direct_function_call, FromDatum};

pub struct JsonbText(pub String);

/// The longest jsonb text any argument may have (a filter's own limit is far lower; a
/// `test_filter` capture of the largest server fits).
pub const MAX_TEXT_BYTES: usize = crate::filter::replay::MAX_SESSIONS_BYTES;

impl FromDatum for JsonbText {
    // SAFETY: callers give a datum of type jsonb (or is_null), as FromDatum requires.
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<JsonbText> {
        if is_null {
            return None;
        }
        let text =
            // SAFETY: a non-NULL jsonb datum given to jsonb's own output function.
            unsafe { direct_function_call::<&std::ffi::CStr>(pg_sys::jsonb_out, &[Some(datum)]) }?;
        // Refused before it is copied out of PostgreSQL's memory (where running out is an
        // ERROR) into this process's own (where it would be an abort).
        let bytes = text.to_bytes().len();
        if bytes > MAX_TEXT_BYTES {
            crate::error::refuse(&format!(
                "a jsonb argument of {bytes} bytes is over the limit of {MAX_TEXT_BYTES} bytes"
            ));
        }
        Some(JsonbText(text.to_string_lossy().into_owned()))
    }
}

// SAFETY: the SQL type named is jsonb, which is what FromDatum reads.
unsafe impl SqlTranslatable for JsonbText {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(JsonbText);
    const TYPE_ORIGIN: TypeOrigin = TypeOrigin::External;
    const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Ok(SqlMappingRef::literal("jsonb"));
    const RETURN_SQL: Result<ReturnsRef, ReturnsError> =
        Ok(ReturnsRef::One(SqlMappingRef::literal("jsonb")));
}

// SAFETY: the argument is read with FromDatum, which checks for NULL first.
unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for JsonbText {
    // SAFETY: pgrx calls it with an argument of this function's call, as ArgAbi requires.
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: pgrx hands over a jsonb argument of this call.
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }

    // SAFETY: as for unbox_arg_unchecked.
    unsafe fn unbox_nullable_arg(
        arg: pgrx::callconv::Arg<'_, 'fcx>,
    ) -> pgrx::nullable::Nullable<Self> {
        // SAFETY: pgrx hands over a jsonb argument of this call.
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}
