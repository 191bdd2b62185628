//! The collector daemon: loads the kernel programs, attributes what they see to workloads,
//! aggregates it and exports it. Pipeline map: ARCHITECTURE.md.

pub mod aggregate;
pub mod api;
pub mod app;
pub mod capabilities;
pub mod config;
pub mod events;
pub mod export;
/// Entry points of the fuzz targets (fuzz/); not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod kubernetes;
pub mod probes;
pub mod status;
pub mod verdict;
