use pgrx::prelude::*;
pub mod filter;
pgrx::pg_module_magic!();
