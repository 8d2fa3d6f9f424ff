//! otel-anomaly: streaming anomaly detection for OpenTelemetry data.
//!
//! Data flows one way: receiver → pipeline → detect → enrich → export.
//! Detectors never import receivers or exporters.

pub mod detect;
