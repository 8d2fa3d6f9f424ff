//! Config parsing: the sidecar's and the aggregator's YAML, with an env override. Body in src/fuzzing.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    otel_anomaly::fuzzing::run("config", data);
});
