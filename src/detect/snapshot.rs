//! Detector state as bytes: a versioned, checksummed snapshot format that the
//! sidecar writes periodically and at shutdown, restores at start, and that
//! `train` will write from history.
//!
//! Layout: `MAGIC` (8 bytes), format version (u32 little endian), then a gzip
//! stream (CRC-32 and length checked on read) of a postcard-encoded
//! [`SnapshotBody`]. Each detector shard is encoded on its own while only
//! that shard is locked, so a snapshot of a busy sidecar never stops the
//! whole pipeline.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use super::keys::MapSnapshot;

/// First bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"OTANSNAP";
/// Format version written by this build; older or newer versions are refused.
///
/// 2: metric series carry a weekly profile, per-time-of-day recurring
/// deviations and profile errors, and keep 5-minute slots of the week
/// instead of 15-minute time-of-day bins (version 1 state cannot be read as
/// version 2: the detector relearns from the live stream).
///
/// 3: metric series may carry a histogram's previous bucket counts (for
/// its quantile series); version 2 state is refused like version 1.
///
/// 4: metric series remember the regime before their last level shift (a
/// return to it is a recovery); version 3 state is refused like the older
/// ones (the detector relearns from the live stream).
pub const VERSION: u32 = 4;

/// Largest ratio of decoded to file size accepted (gzip bombs are refused).
pub const MAX_INFLATION: u64 = 64;
/// Decoded size always accepted, whatever the file's size.
pub const MIN_INFLATED_LIMIT: u64 = 64 << 20;

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Not a snapshot file.
    #[error("not an otel-anomaly snapshot (bad magic bytes)")]
    BadMagic,
    /// Written by an incompatible build.
    #[error("snapshot format version {found} is not supported (this build reads version {supported}; {hint}); delete it or retrain")]
    Version {
        found: u32,
        supported: u32,
        hint: &'static str,
    },
    /// Written for another environment.
    #[error("snapshot is for environment {found:?}, this sidecar is {expected:?}")]
    Environment { found: String, expected: String },
    /// Truncated or damaged.
    #[error("snapshot is damaged: {0}")]
    Corrupt(String),
}

/// The snapshot's content: one encoded `MapSnapshot` per detector shard.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotBody {
    /// Environment the state was learned in.
    pub environment: String,
    /// When the snapshot was taken, ns since the epoch.
    pub created_unix_ns: u64,
    /// Span detector shards (postcard `MapSnapshot<SpanKeyState>`).
    pub spans: Vec<Vec<u8>>,
    /// Metric detector shards (postcard `MapSnapshot<SeriesState>`).
    pub metrics: Vec<Vec<u8>>,
    /// Log detector (postcard `MapSnapshot<RateState>`).
    pub logs: Vec<u8>,
}

/// Encodes one shard's map.
pub fn encode_map<V: Serialize>(m: &MapSnapshot<V>) -> Vec<u8> {
    // Serialising plain data into a Vec cannot fail.
    postcard::to_allocvec(m).unwrap_or_default()
}

/// Decodes one shard's map.
pub fn decode_map<V: for<'de> Deserialize<'de>>(
    bytes: &[u8],
) -> Result<MapSnapshot<V>, SnapshotError> {
    postcard::from_bytes(bytes).map_err(|e| SnapshotError::Corrupt(format!("shard: {e}")))
}

/// Encodes a snapshot file's bytes.
pub fn encode(body: &SnapshotBody) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 16);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    let raw = postcard::to_allocvec(body).unwrap_or_default();
    let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = gz.write_all(&raw);
    gz.finish().unwrap_or_default()
}

/// Decodes a snapshot file's bytes; `environment` must match when given.
pub fn decode(bytes: &[u8], environment: Option<&str>) -> Result<SnapshotBody, SnapshotError> {
    decode_with_floor(bytes, environment, MIN_INFLATED_LIMIT)
}

fn decode_with_floor(
    bytes: &[u8],
    environment: Option<&str>,
    floor: u64,
) -> Result<SnapshotBody, SnapshotError> {
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return Err(SnapshotError::Version {
            found: version,
            supported: VERSION,
            hint: if version < VERSION {
                "written by an older build whose detector state has another layout"
            } else {
                "written by a newer build"
            },
        });
    }
    // A damaged or hostile file must not make the sidecar inflate without
    // bound (a gzip bomb): real snapshots compress 3-10x, so more than
    // MAX_INFLATION times the file's size (and past the floor) is refused.
    let limit = ((bytes.len() as u64).saturating_mul(MAX_INFLATION)).max(floor);
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&bytes[12..])
        .take(limit + 1)
        .read_to_end(&mut raw)
        .map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
    if raw.len() as u64 > limit {
        return Err(SnapshotError::Corrupt(format!(
            "it inflates to more than {limit} bytes ({MAX_INFLATION}x its {} bytes): not a snapshot this build wrote",
            bytes.len()
        )));
    }
    let body: SnapshotBody =
        postcard::from_bytes(&raw).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
    if let Some(expected) = environment {
        if body.environment != expected {
            return Err(SnapshotError::Environment {
                found: body.environment,
                expected: expected.to_string(),
            });
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gzip_bomb_is_refused_without_inflating_it_all() {
        // 16 MiB of zeros compresses to ~16 KiB: far past 64x (and, in this
        // test, past a 1 MiB floor; the real floor is MIN_INFLATED_LIMIT).
        let mut gz = flate2::write::GzEncoder::new(
            [MAGIC.as_slice(), &VERSION.to_le_bytes()].concat(),
            flate2::Compression::fast(),
        );
        gz.write_all(&vec![0u8; 16 << 20]).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 256 << 10, "{}", bomb.len());
        match decode_with_floor(&bomb, None, 1 << 20) {
            Err(SnapshotError::Corrupt(m)) => assert!(m.contains("inflates to more than"), "{m}"),
            other => panic!("{other:?}"),
        }
        // A real snapshot, however small, still decodes (the floor).
        let body = SnapshotBody {
            environment: "prod".into(),
            created_unix_ns: 1,
            spans: vec![vec![7u8; 1000]],
            metrics: vec![],
            logs: vec![],
        };
        let back = decode(&encode(&body), Some("prod")).unwrap();
        assert_eq!(back.spans, body.spans);
    }
    use crate::detect::span::{SpanDetector, SpanObs, SpanParams};

    const MS: u64 = 1_000_000;

    fn feed(d: &mut SpanDetector, from: u64, to: u64) -> Vec<f32> {
        (from..to)
            .map(|i| {
                // A repeating latency pattern with ever slower spikes every 997 spans.
                let dur = if i % 997 == 0 {
                    (1 + i / 997) * 1000 * MS
                } else {
                    (20 + i % 13) * MS
                };
                d.observe(&SpanObs {
                    service: "cart",
                    name: "GET /cart",
                    kind: 2,
                    end_ns: 1_700_000_000_000_000_000 + i * 50 * MS,
                    duration_ns: dur,
                    is_error: i % 101 == 0,
                    trace_id: &[],
                })
                .score
            })
            .collect()
    }

    fn body_of(d: &SpanDetector) -> Vec<u8> {
        encode(&SnapshotBody {
            environment: "prod".into(),
            created_unix_ns: 1,
            spans: vec![encode_map(&d.snapshot())],
            metrics: vec![],
            logs: vec![],
        })
    }

    #[test]
    fn a_restart_mid_stream_scores_like_an_uninterrupted_run() {
        let mut straight = SpanDetector::new(SpanParams::default());
        let expected = feed(&mut straight, 0, 20_000);

        let mut first = SpanDetector::new(SpanParams::default());
        let mut got = feed(&mut first, 0, 12_345);
        let bytes = body_of(&first);
        drop(first);
        let body = decode(&bytes, Some("prod")).expect("decodes");
        let mut second = SpanDetector::new(SpanParams::default());
        second.restore(decode_map(&body.spans[0]).expect("shard decodes"));
        got.extend(feed(&mut second, 12_345, 20_000));
        assert_eq!(got, expected);
        assert!(
            expected.iter().any(|s| *s >= 50.0),
            "the stream has anomalies to compare"
        );
    }

    #[test]
    fn bad_files_are_refused_with_a_clear_reason() {
        let d = SpanDetector::new(SpanParams::default());
        let bytes = body_of(&d);
        assert!(matches!(
            decode(b"hello world!!", None),
            Err(SnapshotError::BadMagic)
        ));
        // Files from the previous formats (version 1, before the weekly
        // profile; version 2, before histogram bucket memory; version 3,
        // before the regime kept across a level shift) and one from a
        // future build are all refused, each saying why.
        for old in [1u32, 2, 3] {
            let mut v = bytes.clone();
            v[8..12].copy_from_slice(&old.to_le_bytes());
            let e = decode(&v, None).unwrap_err();
            assert!(
                e.to_string()
                    .contains(&format!("version {old} is not supported"))
                    && e.to_string().contains("older build"),
                "{e}"
            );
        }
        let mut next = bytes.clone();
        next[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        let e = decode(&next, None).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("version {} is not supported", VERSION + 1))
                && e.to_string().contains("newer build"),
            "{e}"
        );
        let e = decode(&bytes, Some("dev")).unwrap_err();
        assert!(e.to_string().contains("\"prod\""), "{e}");
        let mut torn = bytes.clone();
        torn.truncate(bytes.len() - 5);
        assert!(matches!(
            decode(&torn, None),
            Err(SnapshotError::Corrupt(_))
        ));
        let mut flipped = bytes.clone();
        let mid = bytes.len() / 2;
        flipped[mid] ^= 0x55;
        assert!(decode(&flipped, None).is_err());
    }
}
