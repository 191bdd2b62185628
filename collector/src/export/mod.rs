//! Exporters. Prometheus (OpenMetrics text) today; every metric is registered in one place.

pub mod grpc;
pub mod http;
pub mod otlp;
pub mod prometheus;
pub mod tcp;
pub mod verdict;

pub use prometheus::Metrics;
