//! The metrics check against prost: what it accepts decodes, validates whole, and scores the same. Body in src/fuzzing.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    otel_anomaly::fuzzing::run("wire_metrics", data);
});
