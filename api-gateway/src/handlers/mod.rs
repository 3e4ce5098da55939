//! Request handlers, by area.

pub mod admin;
pub mod buckets;
pub mod flows;
pub mod functions;
pub mod history;
pub mod invoke;
pub mod logs;
pub mod metrics;
pub mod ops;
pub mod triggers;
pub mod usage;
pub mod versions;
