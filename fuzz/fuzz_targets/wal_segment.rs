//! The write-ahead queue's segment reader (torn and corrupt tails). Body in src/fuzzing.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    otel_anomaly::fuzzing::run("wal_segment", data);
});
