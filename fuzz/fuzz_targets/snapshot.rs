//! The detector snapshot loader: restore, then score and snapshot again. Body in src/fuzzing.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    otel_anomaly::fuzzing::run("snapshot", data);
});
