//! The sandpool scheduler: keeps pools warm on the node agents and assigns
//! claims to warm sandboxes.
//!
//! Pure decisions (pool sizing, warm choice, claim state machine, TTL, shard
//! patches) come from `sandpool-core`; this crate does the I/O: node agent
//! gRPC, the embedded store, the replenisher and the TTL reaper.

pub mod error;
pub mod scheduler;
pub mod service;
pub mod store;

pub use error::{Result, SchedError};
pub use scheduler::{Scheduler, SchedulerConfig};

pub use sandpool_telemetry::grpc_request as traced;
