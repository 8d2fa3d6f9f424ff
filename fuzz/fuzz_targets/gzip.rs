//! Request decompression: arbitrary bytes as a gzip body never inflate past
//! the cap, and what we compress comes back whole (or is refused at the cap).
#![no_main]
use std::io::Write;

use otel_anomaly::receiver::decode::decompress;

const LIMIT: usize = 64 << 10;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let raw = bytes::Bytes::copy_from_slice(data);
    if let Ok(out) = decompress(raw, Some("gzip"), LIMIT) {
        assert!(out.len() <= LIMIT, "inflated past the cap: {}", out.len());
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    let packed = bytes::Bytes::from(gz.finish().unwrap());
    match decompress(packed, Some("gzip"), LIMIT) {
        Ok(out) => assert_eq!(&out[..], data),
        Err(e) => assert!(data.len() > LIMIT, "valid gzip refused: {e}"),
    }
    // Other encodings: identity passes through, anything else is refused.
    let raw = bytes::Bytes::copy_from_slice(data);
    if let Ok(out) = decompress(raw, None, LIMIT) {
        assert_eq!(&out[..], data);
    }
});
