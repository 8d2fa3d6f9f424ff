//! OTLP protobuf decode + validation + scoring + documents. Body in src/fuzzing.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    otel_anomaly::fuzzing::run("otlp_protobuf", data);
});
