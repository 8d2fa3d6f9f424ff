//! The aggregator's push API message handling: decode, scope check, store. Body in src/fuzzing.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    otel_anomaly::fuzzing::run("push_api", data);
});
