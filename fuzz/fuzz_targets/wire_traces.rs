//! The wire reader of trace requests against prost: same documents. Body in src/fuzzing.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    otel_anomaly::fuzzing::run("wire_traces", data);
});
