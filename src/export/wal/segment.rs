//! The on-disk format of a WAL segment, and a pure reader over its bytes.
//!
//! A segment is a file `<seq as 16 hex digits>.wal`:
//!
//! ```text
//! header   8 bytes  b"OAWAL\0\0\x01"           (magic + format version 1)
//! record*  4 bytes  body length n, u32 little-endian
//!          4 bytes  CRC-32 (IEEE) of the 4 length bytes followed by the body, u32 little-endian
//!          n bytes  body: 1 byte signal (1 traces, 2 metrics, 3 logs),
//!                         4 bytes record count (u32 LE),
//!                         the export request as protobuf that decodes to the
//!                         request as accepted: its bytes as received, or the
//!                         accepted request encoded again (not marked which)
//! ```
//!
//! Records are only ever appended. After a crash the last record may be
//! cut short (torn) or hold garbage (a write that reached the disk only in
//! part); [`scan`] stops at the first record that does not check out and
//! reports where the valid prefix ends, so the opener can truncate there.

use crate::telemetry::Signal;

/// First bytes of every segment.
pub const MAGIC: &[u8; 8] = b"OAWAL\0\0\x01";
/// Bytes before the body of a record (length + CRC).
pub const RECORD_HEADER: usize = 8;
/// Bytes of the body before the request (signal + record count).
pub const BODY_PREFIX: usize = 5;
/// Largest body a reader accepts; a longer length field is corruption.
pub const MAX_BODY: usize = 1 << 30;

/// One record found by [`scan`]: where its body starts and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef {
    /// Offset of the record (its length field) in the segment.
    pub offset: u64,
    /// Length of the whole record, header included.
    pub len: u32,
    pub signal: Signal,
    /// Records (spans, points, log records) the request holds.
    pub records: u32,
}

/// How a segment ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Every byte belongs to a valid record.
    Clean,
    /// The last record is cut short: `bytes` after the valid prefix.
    Torn { bytes: u64 },
    /// A record fails its checksum or is malformed: `bytes` from it to the end.
    Corrupt { bytes: u64 },
}

/// What [`scan`] found in a segment's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub records: Vec<RecordRef>,
    /// Length of the valid prefix (header and whole records).
    pub valid_len: u64,
    pub tail: Tail,
}

/// Why a segment cannot be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("not a WAL segment (bad magic bytes)")]
    BadMagic,
}

/// Why one record's body cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record checksum mismatch")]
    Checksum,
    #[error("record body too short ({0} bytes)")]
    Short(usize),
    #[error("unknown signal byte {0}")]
    Signal(u8),
    #[error("record length field {0} out of range")]
    Length(u64),
}

fn signal_byte(s: Signal) -> u8 {
    match s {
        Signal::traces => 1,
        Signal::metrics => 2,
        Signal::logs => 3,
    }
}

fn signal_of(b: u8) -> Result<Signal, RecordError> {
    match b {
        1 => Ok(Signal::traces),
        2 => Ok(Signal::metrics),
        3 => Ok(Signal::logs),
        other => Err(RecordError::Signal(other)),
    }
}

fn crc(len_bytes: &[u8; 4], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len_bytes);
    h.update(body);
    h.finalize()
}

/// Encodes one record: `encode` appends the request bytes.
pub fn encode_record(signal: Signal, records: u32, encode: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    encode_record_sized(signal, records, 256, encode)
}

/// [`encode_record`] with room for a request of `request_len` bytes
/// reserved up front (a buffer that grows copies what it holds).
pub fn encode_record_sized(
    signal: Signal,
    records: u32,
    request_len: usize,
    encode: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(RECORD_HEADER + BODY_PREFIX + request_len);
    buf.extend_from_slice(&[0; RECORD_HEADER]);
    buf.push(signal_byte(signal));
    buf.extend_from_slice(&records.to_le_bytes());
    encode(&mut buf);
    let body_len = (buf.len() - RECORD_HEADER) as u32;
    let len_bytes = body_len.to_le_bytes();
    let sum = crc(&len_bytes, &buf[RECORD_HEADER..]);
    buf[0..4].copy_from_slice(&len_bytes);
    buf[4..8].copy_from_slice(&sum.to_le_bytes());
    buf
}

/// Checks one whole record (header + body) and returns (signal, record count, request bytes).
pub fn decode_record(rec: &[u8]) -> Result<(Signal, u32, &[u8]), RecordError> {
    if rec.len() < RECORD_HEADER + BODY_PREFIX {
        return Err(RecordError::Short(rec.len()));
    }
    let len_bytes: [u8; 4] = [rec[0], rec[1], rec[2], rec[3]];
    let body_len = u32::from_le_bytes(len_bytes) as usize;
    if body_len != rec.len() - RECORD_HEADER {
        return Err(RecordError::Length(body_len as u64));
    }
    let want = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
    let body = &rec[RECORD_HEADER..];
    if crc(&len_bytes, body) != want {
        return Err(RecordError::Checksum);
    }
    let signal = signal_of(body[0])?;
    let records = u32::from_le_bytes([body[1], body[2], body[3], body[4]]);
    Ok((signal, records, &body[BODY_PREFIX..]))
}

/// Reads a segment's bytes: the valid records, and how the segment ends.
/// Pure and total: any input gives an answer, never a panic.
pub fn scan(bytes: &[u8]) -> Result<Scan, SegmentError> {
    if bytes.len() < MAGIC.len() {
        // A segment whose header was never completely written holds nothing.
        if MAGIC.starts_with(bytes) {
            return Ok(Scan {
                records: Vec::new(),
                valid_len: 0,
                tail: if bytes.is_empty() {
                    Tail::Clean
                } else {
                    Tail::Torn {
                        bytes: bytes.len() as u64,
                    }
                },
            });
        }
        return Err(SegmentError::BadMagic);
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(SegmentError::BadMagic);
    }
    let mut records = Vec::new();
    let mut at = MAGIC.len();
    let tail = loop {
        let rest = &bytes[at..];
        if rest.is_empty() {
            break Tail::Clean;
        }
        if rest.len() < RECORD_HEADER {
            break Tail::Torn {
                bytes: rest.len() as u64,
            };
        }
        let body_len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if !(BODY_PREFIX..=MAX_BODY).contains(&body_len) {
            break Tail::Corrupt {
                bytes: rest.len() as u64,
            };
        }
        let total = RECORD_HEADER + body_len;
        if rest.len() < total {
            break Tail::Torn {
                bytes: rest.len() as u64,
            };
        }
        match decode_record(&rest[..total]) {
            Ok((signal, n, _)) => {
                records.push(RecordRef {
                    offset: at as u64,
                    len: total as u32,
                    signal,
                    records: n,
                });
                at += total;
            }
            Err(_) => {
                break Tail::Corrupt {
                    bytes: rest.len() as u64,
                }
            }
        }
    };
    Ok(Scan {
        records,
        valid_len: at as u64,
        tail,
    })
}

/// File name of segment `seq`.
pub fn file_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

/// Sequence number of a segment file name, if it is one.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".wal")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn segment(records: &[(Signal, u32, &[u8])]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for (s, n, body) in records {
            out.extend(encode_record(*s, *n, |b| b.extend_from_slice(body)));
        }
        out
    }

    #[test]
    fn reads_back_what_was_written() {
        let seg = segment(&[
            (Signal::traces, 3, b"abc"),
            (Signal::logs, 1, b""),
            (Signal::metrics, 7, &[0u8; 1000]),
        ]);
        let s = scan(&seg).unwrap();
        assert_eq!(s.tail, Tail::Clean);
        assert_eq!(s.valid_len, seg.len() as u64);
        assert_eq!(s.records.len(), 3);
        let r = s.records[0];
        let (sig, n, body) =
            decode_record(&seg[r.offset as usize..(r.offset + r.len as u64) as usize]).unwrap();
        assert_eq!((sig, n, body), (Signal::traces, 3, &b"abc"[..]));
        assert_eq!(s.records[2].signal, Signal::metrics);
        assert_eq!(s.records[2].records, 7);
    }

    #[test]
    fn every_cut_of_the_last_record_is_a_torn_tail() {
        let seg = segment(&[
            (Signal::traces, 1, b"first"),
            (Signal::traces, 2, b"second"),
        ]);
        let first_end = MAGIC.len() + RECORD_HEADER + BODY_PREFIX + 5;
        for cut in first_end + 1..seg.len() {
            let s = scan(&seg[..cut]).unwrap();
            assert_eq!(s.records.len(), 1, "cut at {cut}");
            assert_eq!(s.valid_len, first_end as u64);
            assert_eq!(
                s.tail,
                Tail::Torn {
                    bytes: (cut - first_end) as u64
                }
            );
        }
    }

    #[test]
    fn a_flipped_bit_ends_the_valid_prefix_there() {
        let seg = segment(&[
            (Signal::traces, 1, b"one"),
            (Signal::traces, 1, b"two"),
            (Signal::traces, 1, b"three"),
        ]);
        let second = scan(&seg).unwrap().records[1];
        let mut bad = seg.clone();
        bad[second.offset as usize + RECORD_HEADER + 6] ^= 0x10;
        let s = scan(&bad).unwrap();
        assert_eq!(s.records.len(), 1);
        assert_eq!(s.valid_len, second.offset);
        assert!(matches!(s.tail, Tail::Corrupt { .. }));
    }

    #[test]
    fn bad_magic_and_partial_header() {
        assert_eq!(scan(b"NOTAWAL!xxxx"), Err(SegmentError::BadMagic));
        let s = scan(&MAGIC[..3]).unwrap();
        assert_eq!(s.valid_len, 0);
        assert_eq!(s.tail, Tail::Torn { bytes: 3 });
        assert_eq!(scan(b"").unwrap().tail, Tail::Clean);
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(parse_file_name(&file_name(0xabc)), Some(0xabc));
        assert_eq!(parse_file_name("detectors.snap"), None);
        assert_eq!(parse_file_name("zzzzzzzzzzzzzzzz.wal"), None);
    }

    proptest! {
        // Any bytes: no panic, and the valid prefix re-scans to the same records with a clean tail.
        #[test]
        fn scan_is_total_and_its_prefix_is_clean(tail in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut seg = segment(&[(Signal::logs, 2, b"hello")]);
            seg.extend_from_slice(&tail);
            let s = scan(&seg).unwrap();
            prop_assert!(!s.records.is_empty());
            let again = scan(&seg[..s.valid_len as usize]).unwrap();
            prop_assert_eq!(again.tail, Tail::Clean);
            prop_assert_eq!(again.records, s.records);
        }
    }
}
