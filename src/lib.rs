//! otel-anomaly: streaming anomaly detection for OpenTelemetry data.
//!
//! Data flows one way: receiver → pipeline → detect → enrich → export.
//! Detectors never import receivers or exporters.

pub mod aggregator;
pub mod bench_sink;
pub mod config;
pub mod demo;
pub mod detect;
pub mod enrich;
pub mod export;
pub mod faultbench;
#[doc(hidden)]
pub mod fuzzing;
pub mod loadgen;
pub mod nab;
pub mod pipeline;
pub mod push;
pub mod receiver;
pub mod replay;
pub mod replay_otlp;
pub mod sidecar;
pub mod telemetry;
pub mod tls;
pub mod train;
