//! OTLP protobuf decode + validation + conversion to documents.
#![no_main]
mod otlp_common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    otlp_common::run(data, otel_anomaly::receiver::decode::Format::Protobuf);
});
