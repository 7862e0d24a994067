//! The command-line front end: one module per subcommand family.

pub mod bench;
pub mod check;
pub mod data;
pub mod device;
pub mod eval;
pub mod fetch;
pub mod plot;
pub mod train;
