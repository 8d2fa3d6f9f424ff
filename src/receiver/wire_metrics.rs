//! A check of OTLP metrics requests on their protobuf bytes, so that the
//! pipeline can hold a request as those bytes (~220 bytes a point) instead
//! of prost's decoded tree (~1.2 KiB a point: a `String` per name, key and
//! value, a `Vec` per point, attribute list and bucket list) from receipt
//! until a scoring worker takes it. The worker decodes it with prost then,
//! on its own thread, and scores and writes it exactly as before.
//!
//! [`check_metrics`] accepts a request only when it is sure that prost
//! decodes it without error and that validation (`pipeline::validate::metrics`)
//! removes nothing from it: every field prost knows has prost's wire type
//! (packed or not for repeated numbers), every string is UTF-8, lengths and
//! varints are in bounds, a metric's `data` oneof is set at most once, every
//! metric has a name, every point a `time_unix_nano` and every number point a
//! value (prost keeps the last of repeated scalars; so does the check). It
//! returns the number of points. Anything else is *declined*, and the
//! request takes the prost path as before (same errors, same
//! `partial_success`); a declined request is never an error by itself.
//!
//! Checked by a property test over generated requests (`tests/wire_metrics.rs`)
//! and by the fuzz target `wire_metrics` over arbitrary bytes.

use super::wire::{
    check_kv, check_resource, check_scope, fields, is_fixed64, is_varint, len, string, Declined,
    Value,
};

/// Checks a metrics request (see the module comment). Returns the number
/// of data points when the request can be queued as its bytes.
pub fn check_metrics(req: &[u8]) -> Result<usize, Declined> {
    let mut points = 0;
    for f in fields(req) {
        if let (1, v) = f? {
            check_resource_metrics(len(v)?, &mut points)?;
        }
    }
    Ok(points)
}

fn check_resource_metrics(m: &[u8], points: &mut usize) -> Result<(), Declined> {
    for f in fields(m) {
        match f? {
            (1, v) => check_resource(len(v)?)?,
            (2, v) => check_scope_metrics(len(v)?, points)?,
            (3, v) => string(v)?,
            _ => {}
        }
    }
    Ok(())
}

fn check_scope_metrics(m: &[u8], points: &mut usize) -> Result<(), Declined> {
    for f in fields(m) {
        match f? {
            (1, v) => check_scope(len(v)?)?,
            (2, v) => *points += check_metric(len(v)?)?,
            (3, v) => string(v)?,
            _ => {}
        }
    }
    Ok(())
}

/// The kinds of point a metric's `data` holds.
#[derive(Clone, Copy)]
enum Kind {
    Number,
    Histogram,
    Exponential,
    Summary,
}

/// A metric's points, when validation keeps every one of them.
fn check_metric(m: &[u8]) -> Result<usize, Declined> {
    // prost keeps the last `name`; validation drops the points of a metric without one.
    let mut named = false;
    let mut data = false;
    let mut points = 0;
    for f in fields(m) {
        let (tag, v) = f?;
        match tag {
            1 => {
                string(v)?;
                named = !len(v)?.is_empty();
            }
            2 | 3 => string(v)?,
            12 => check_kv(len(v)?, 0)?,
            5 | 7 | 9 | 10 | 11 => {
                // A second value of the oneof: prost replaces or merges; left to it.
                if std::mem::replace(&mut data, true) {
                    return Err(Declined);
                }
                let kind = match tag {
                    5 | 7 => Kind::Number,
                    9 => Kind::Histogram,
                    10 => Kind::Exponential,
                    _ => Kind::Summary,
                };
                points = check_data(len(v)?, tag, kind)?;
            }
            _ => {}
        }
    }
    if points > 0 && !named {
        return Err(Declined);
    }
    Ok(points)
}

/// `Gauge`, `Sum`, `Histogram`, `ExponentialHistogram` or `Summary` (`tag` in `Metric`).
fn check_data(m: &[u8], tag: u32, kind: Kind) -> Result<usize, Declined> {
    let mut points = 0;
    for f in fields(m) {
        match f? {
            (1, v) => {
                check_point(len(v)?, kind)?;
                points += 1;
            }
            // aggregation_temporality (Sum, Histogram, ExponentialHistogram)
            (2, v) if tag != 5 && tag != 11 => is_varint(v)?,
            // is_monotonic (Sum)
            (3, v) if tag == 7 => is_varint(v)?,
            _ => {}
        }
    }
    Ok(points)
}

/// One data point: well formed, with a time (the last one on the wire is
/// prost's), and a value for number points.
fn check_point(m: &[u8], kind: Kind) -> Result<(), Declined> {
    let mut time = 0u64;
    let mut value = false;
    for f in fields(m) {
        let (tag, v) = f?;
        match (kind, tag) {
            // start_time_unix_nano
            (_, 2) => is_fixed64(v)?,
            (_, 3) => time = fixed64(v)?,
            (Kind::Number, 4 | 6) => {
                is_fixed64(v)?;
                value = true;
            }
            (Kind::Number, 5) => check_exemplar(len(v)?)?,
            (Kind::Number, 7) => check_kv(len(v)?, 0)?,
            (Kind::Number, 8) => is_varint(v)?,
            // count, sum, min, max
            (Kind::Histogram, 4 | 5 | 11 | 12) => is_fixed64(v)?,
            // bucket_counts, explicit_bounds
            (Kind::Histogram, 6 | 7) => packed_fixed64(v)?,
            (Kind::Histogram, 8) => check_exemplar(len(v)?)?,
            (Kind::Histogram, 9) => check_kv(len(v)?, 0)?,
            (Kind::Histogram, 10) => is_varint(v)?,
            (Kind::Exponential, 1) => check_kv(len(v)?, 0)?,
            // count, sum, zero_count, min, max, zero_threshold
            (Kind::Exponential, 4 | 5 | 7 | 12 | 13 | 14) => is_fixed64(v)?,
            // scale, flags
            (Kind::Exponential, 6 | 10) => is_varint(v)?,
            (Kind::Exponential, 8 | 9) => check_buckets(len(v)?)?,
            (Kind::Exponential, 11) => check_exemplar(len(v)?)?,
            (Kind::Summary, 4 | 5) => is_fixed64(v)?,
            (Kind::Summary, 6) => check_quantile(len(v)?)?,
            (Kind::Summary, 7) => check_kv(len(v)?, 0)?,
            (Kind::Summary, 8) => is_varint(v)?,
            _ => {}
        }
    }
    // Validation would remove the point: prost's path reports it.
    if time == 0 || (matches!(kind, Kind::Number) && !value) {
        return Err(Declined);
    }
    Ok(())
}

fn fixed64(v: Value<'_>) -> Result<u64, Declined> {
    match v {
        Value::Fixed64(x) => Ok(x),
        _ => Err(Declined),
    }
}

/// A repeated `fixed64` / `double`: packed (a whole number of 8-byte values) or one value.
fn packed_fixed64(v: Value<'_>) -> Result<(), Declined> {
    match v {
        Value::Fixed64(_) => Ok(()),
        Value::Len(b) if b.len() % 8 == 0 => Ok(()),
        _ => Err(Declined),
    }
}

/// A repeated `uint64`: packed (varints that fill the field exactly) or one varint.
fn packed_varint(v: Value<'_>) -> Result<(), Declined> {
    match v {
        Value::Varint(_) => Ok(()),
        Value::Len(mut b) => {
            while !b.is_empty() {
                super::wire::varint(&mut b)?;
            }
            Ok(())
        }
        _ => Err(Declined),
    }
}

fn check_buckets(m: &[u8]) -> Result<(), Declined> {
    for f in fields(m) {
        match f? {
            (1, v) => is_varint(v)?,
            (2, v) => packed_varint(v)?,
            _ => {}
        }
    }
    Ok(())
}

fn check_quantile(m: &[u8]) -> Result<(), Declined> {
    for f in fields(m) {
        if let (1 | 2, v) = f? {
            is_fixed64(v)?;
        }
    }
    Ok(())
}

fn check_exemplar(m: &[u8]) -> Result<(), Declined> {
    for f in fields(m) {
        match f? {
            (7, v) => check_kv(len(v)?, 0)?,
            (2 | 3 | 6, v) => is_fixed64(v)?,
            (4 | 5, v) => {
                len(v)?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_lists_must_fill_their_field() {
        assert!(packed_fixed64(Value::Len(&[0; 16])).is_ok());
        assert!(packed_fixed64(Value::Len(&[0; 12])).is_err());
        assert!(packed_fixed64(Value::Varint(1)).is_err());
        assert!(packed_varint(Value::Len(&[1, 0x80, 1])).is_ok());
        // A varint cut short at the end of the field.
        assert!(packed_varint(Value::Len(&[1, 0x80])).is_err());
    }
}
