//! Request decompression: never past the cap; a gzip round trip is exact. Body in src/fuzzing.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    otel_anomaly::fuzzing::run("gzip", data);
});
