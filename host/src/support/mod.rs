//! Small helpers every layer may use. Nothing here imports from the rest of
//! the crate, so any module can depend on them without reaching upwards.
//!
//! - [`units`]: durations and byte sizes as operators write them (`90s`,
//!   `64MiB`);
//! - [`names`]: the rule for matcher and tenant names;
//! - [`files`]: writing a file so that a reader never sees half of it;
//! - [`capacity`]: giving a map's memory back after a burst;
//! - [`every`]: the periodic wake-up of a polling background loop;
//! - [`text`]: cutting untrusted text to a size before it is kept.

pub mod capacity;
pub mod every;
pub mod files;
pub mod names;
pub mod text;
pub mod units;
