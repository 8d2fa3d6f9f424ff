//! A borrowing reader of OTLP trace requests, straight from the received
//! protobuf bytes: the sidecar's hot path (score every span, write its
//! document) reads names, attributes and ids as slices of the request
//! instead of building a `String` or `Vec` per field with prost, and never
//! frees them one by one.
//!
//! [`check_traces`] is run on receipt. It accepts a request only when it is
//! sure prost would decode it to the same values: every field prost knows
//! has prost's wire type, every string is UTF-8, lengths and varints are in
//! bounds, no singular message field is repeated (prost would merge the
//! copies), no `oneof` holds two values, nesting stays shallow and every span
//! has valid ids. Anything else is *declined*, and the request takes the
//! prost path as before (same errors, same `partial_success`). A declined
//! request is never an error by itself.
//!
//! Equality with the prost path is checked by a property test over
//! generated requests (`tests/wire_traces.rs`) and by the fuzz target
//! `wire_traces` over arbitrary bytes.

/// One field's value as it is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
}

/// The reader declined the bytes: prost decodes them instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declined;

/// Nesting of `AnyValue`s (arrays, key-value lists) beyond which the reader
/// declines (prost's own limit is 100 messages deep).
const MAX_VALUE_DEPTH: u32 = 16;

#[inline(always)]
pub(crate) fn varint(buf: &mut &[u8]) -> Result<u64, Declined> {
    // Most varints on this path (tags, lengths) are one byte: that case is
    // inlined at every call site, the rest is an out-of-line call.
    if let Some((&b, rest)) = buf.split_first() {
        if b < 0x80 {
            *buf = rest;
            return Ok(u64::from(b));
        }
    }
    varint_long(buf)
}

#[cold]
#[inline(never)]
fn varint_long(buf: &mut &[u8]) -> Result<u64, Declined> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf.split_first().ok_or(Declined)?;
        *buf = rest;
        // prost refuses a tenth byte above 1 (the value would overflow).
        if i == 9 && b > 1 {
            return Err(Declined);
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(Declined)
}

#[inline]
fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], Declined> {
    if buf.len() < n {
        return Err(Declined);
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// The fields of one message, in wire order.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    buf: &'a [u8],
}

/// The fields of `msg`.
pub fn fields(msg: &[u8]) -> Fields<'_> {
    Fields { buf: msg }
}

impl<'a> Fields<'a> {
    #[inline]
    fn next_field(&mut self) -> Result<(u32, Value<'a>), Declined> {
        let key = varint(&mut self.buf)?;
        if key > u64::from(u32::MAX) {
            return Err(Declined);
        }
        let tag = (key as u32) >> 3;
        if tag == 0 {
            return Err(Declined);
        }
        let value = match key & 7 {
            0 => Value::Varint(varint(&mut self.buf)?),
            1 => {
                let b = take(&mut self.buf, 8)?;
                Value::Fixed64(u64::from_le_bytes(b.try_into().map_err(|_| Declined)?))
            }
            2 => {
                let len = varint(&mut self.buf)?;
                let len = usize::try_from(len).map_err(|_| Declined)?;
                Value::Len(take(&mut self.buf, len)?)
            }
            5 => {
                let b = take(&mut self.buf, 4)?;
                Value::Fixed32(u32::from_le_bytes(b.try_into().map_err(|_| Declined)?))
            }
            // Groups (3, 4) are skipped by prost; the reader leaves them to it.
            _ => return Err(Declined),
        };
        Ok((tag, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), Declined>;
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let r = self.next_field();
        if r.is_err() {
            // Stop after an error.
            self.buf = &[];
        }
        Some(r)
    }
}

/// The fields of a message already accepted by [`check_traces`] (which
/// cannot hold an error).
fn checked_fields(msg: &[u8]) -> impl Iterator<Item = (u32, Value<'_>)> {
    fields(msg).map_while(Result::ok)
}

pub(crate) fn utf8(b: &[u8]) -> Result<(), Declined> {
    // ASCII (most names and values) is checked a word at a time.
    if b.is_ascii() || std::str::from_utf8(b).is_ok() {
        return Ok(());
    }
    Err(Declined)
}

pub(crate) fn is_varint(v: Value<'_>) -> Result<(), Declined> {
    match v {
        Value::Varint(_) => Ok(()),
        _ => Err(Declined),
    }
}

pub(crate) fn is_fixed64(v: Value<'_>) -> Result<(), Declined> {
    match v {
        Value::Fixed64(_) => Ok(()),
        _ => Err(Declined),
    }
}

pub(crate) fn is_fixed32(v: Value<'_>) -> Result<(), Declined> {
    match v {
        Value::Fixed32(_) => Ok(()),
        _ => Err(Declined),
    }
}

pub(crate) fn len(v: Value<'_>) -> Result<&[u8], Declined> {
    match v {
        Value::Len(b) => Ok(b),
        _ => Err(Declined),
    }
}

pub(crate) fn string(v: Value<'_>) -> Result<(), Declined> {
    utf8(len(v)?)
}

/// Checks a trace request (see the module comment). Returns the number of
/// spans when the reader can take it.
pub fn check_traces(req: &[u8]) -> Result<usize, Declined> {
    let mut spans = 0;
    for f in fields(req) {
        if let (1, v) = f? {
            check_resource_spans(len(v)?, &mut spans)?;
        }
    }
    Ok(spans)
}

fn once(seen: &mut bool) -> Result<(), Declined> {
    if std::mem::replace(seen, true) {
        return Err(Declined);
    }
    Ok(())
}

fn check_resource_spans(m: &[u8], spans: &mut usize) -> Result<(), Declined> {
    let mut resource = false;
    for f in fields(m) {
        match f? {
            (1, v) => {
                once(&mut resource)?;
                check_resource(len(v)?)?;
            }
            (2, v) => check_scope_spans(len(v)?, spans)?,
            (3, v) => {
                string(v)?;
            }
            _ => {}
        }
    }
    Ok(())
}

pub(crate) fn check_resource(m: &[u8]) -> Result<(), Declined> {
    for f in fields(m) {
        match f? {
            (1, v) => check_kv(len(v)?, 0)?,
            (2, v) => is_varint(v)?,
            // entity_refs: not read here; prost's path handles them.
            (3, _) => return Err(Declined),
            _ => {}
        }
    }
    Ok(())
}

fn check_scope_spans(m: &[u8], spans: &mut usize) -> Result<(), Declined> {
    let mut scope = false;
    for f in fields(m) {
        match f? {
            (1, v) => {
                once(&mut scope)?;
                check_scope(len(v)?)?;
            }
            (2, v) => {
                check_span(len(v)?)?;
                *spans += 1;
            }
            (3, v) => {
                string(v)?;
            }
            _ => {}
        }
    }
    Ok(())
}

pub(crate) fn check_scope(m: &[u8]) -> Result<(), Declined> {
    for f in fields(m) {
        match f? {
            (1 | 2, v) => {
                string(v)?;
            }
            (3, v) => check_kv(len(v)?, 0)?,
            (4, v) => is_varint(v)?,
            _ => {}
        }
    }
    Ok(())
}

fn valid_id(id: &[u8], n: usize) -> bool {
    id.len() == n && id.iter().any(|b| *b != 0)
}

fn check_span(m: &[u8]) -> Result<(), Declined> {
    let (mut trace_id, mut span_id): (&[u8], &[u8]) = (&[], &[]);
    let mut status = false;
    for f in fields(m) {
        match f? {
            (1, v) => trace_id = len(v)?,
            (2, v) => span_id = len(v)?,
            (4, v) => {
                len(v)?;
            }
            (3 | 5, v) => {
                string(v)?;
            }
            (6 | 10 | 12 | 14, v) => is_varint(v)?,
            (7 | 8, v) => is_fixed64(v)?,
            (16, v) => is_fixed32(v)?,
            (9, v) => check_kv(len(v)?, 0)?,
            (11, v) => check_event(len(v)?)?,
            (13, v) => check_link(len(v)?)?,
            (15, v) => {
                once(&mut status)?;
                check_status(len(v)?)?;
            }
            _ => {}
        }
    }
    // Invalid ids are removed with a partial success: prost's path does that.
    if !valid_id(trace_id, 16) || !valid_id(span_id, 8) {
        return Err(Declined);
    }
    Ok(())
}

fn check_event(m: &[u8]) -> Result<(), Declined> {
    for f in fields(m) {
        match f? {
            (1, v) => is_fixed64(v)?,
            (2, v) => {
                string(v)?;
            }
            (3, v) => check_kv(len(v)?, 0)?,
            (4, v) => is_varint(v)?,
            _ => {}
        }
    }
    Ok(())
}

fn check_link(m: &[u8]) -> Result<(), Declined> {
    for f in fields(m) {
        match f? {
            (1 | 2, v) => {
                len(v)?;
            }
            (3, v) => {
                string(v)?;
            }
            (4, v) => check_kv(len(v)?, 0)?,
            (5, v) => is_varint(v)?,
            (6, v) => is_fixed32(v)?,
            _ => {}
        }
    }
    Ok(())
}

fn check_status(m: &[u8]) -> Result<(), Declined> {
    for f in fields(m) {
        match f? {
            (2, v) => {
                string(v)?;
            }
            (3, v) => is_varint(v)?,
            _ => {}
        }
    }
    Ok(())
}

pub(crate) fn check_kv(m: &[u8], depth: u32) -> Result<(), Declined> {
    let mut value = false;
    for f in fields(m) {
        match f? {
            (1, v) => {
                string(v)?;
            }
            (2, v) => {
                once(&mut value)?;
                check_any(len(v)?, depth)?;
            }
            (3, v) => is_varint(v)?,
            _ => {}
        }
    }
    Ok(())
}

fn check_any(m: &[u8], depth: u32) -> Result<(), Declined> {
    if depth > MAX_VALUE_DEPTH {
        return Err(Declined);
    }
    let mut value = false;
    for f in fields(m) {
        let (tag, v) = f?;
        if (1..=8).contains(&tag) {
            // A second value of the oneof: prost replaces or merges; left to it.
            once(&mut value)?;
        }
        match (tag, v) {
            (1, v) => {
                string(v)?;
            }
            (2 | 3 | 8, v) => is_varint(v)?,
            (4, v) => is_fixed64(v)?,
            (5, v) => {
                for f in fields(len(v)?) {
                    if let (1, v) = f? {
                        check_any(len(v)?, depth + 1)?;
                    }
                }
            }
            (6, v) => {
                for f in fields(len(v)?) {
                    if let (1, v) = f? {
                        check_kv(len(v)?, depth + 1)?;
                    }
                }
            }
            (7, v) => {
                len(v)?;
            }
            _ => {}
        }
    }
    Ok(())
}

// ---- views of a checked request ----

/// Each `ResourceSpans` of a checked request: (resource, its scope spans, schema_url).
pub fn resource_spans(req: &[u8]) -> impl Iterator<Item = ResourceSpansView<'_>> {
    checked_fields(req).filter_map(|(tag, v)| match (tag, v) {
        (1, Value::Len(m)) => Some(ResourceSpansView::read(m)),
        _ => None,
    })
}

/// One `ResourceSpans`.
#[derive(Debug, Clone, Copy)]
pub struct ResourceSpansView<'a> {
    raw: &'a [u8],
    /// The `Resource` message, when present.
    pub resource: Option<&'a [u8]>,
    /// `schema_url` (UTF-8, checked).
    pub schema_url: &'a [u8],
}

impl<'a> ResourceSpansView<'a> {
    fn read(raw: &'a [u8]) -> Self {
        let mut out = Self {
            raw,
            resource: None,
            schema_url: &[],
        };
        for (tag, v) in checked_fields(raw) {
            match (tag, v) {
                (1, Value::Len(m)) => out.resource = Some(m),
                (3, Value::Len(s)) => out.schema_url = s,
                _ => {}
            }
        }
        out
    }

    /// The scope spans, in wire order.
    pub fn scope_spans(&self) -> impl Iterator<Item = ScopeSpansView<'a>> {
        checked_fields(self.raw).filter_map(|(tag, v)| match (tag, v) {
            (2, Value::Len(m)) => Some(ScopeSpansView::read(m)),
            _ => None,
        })
    }
}

/// The attributes (`KeyValue` messages) of a `Resource`, an
/// `InstrumentationScope`, a span, an event or a link: the repeated field
/// `tag` of `msg`.
pub fn repeated(msg: &[u8], tag: u32) -> impl Iterator<Item = &[u8]> {
    checked_fields(msg).filter_map(move |(t, v)| match v {
        Value::Len(m) if t == tag => Some(m),
        _ => None,
    })
}

/// The last varint of field `tag` (0 when absent), as prost reads a scalar.
pub fn last_varint(msg: &[u8], tag: u32) -> u64 {
    checked_fields(msg)
        .filter_map(|(t, v)| match v {
            Value::Varint(x) if t == tag => Some(x),
            _ => None,
        })
        .last()
        .unwrap_or(0)
}

/// The last length-delimited field `tag` (empty when absent).
pub fn last_len(msg: &[u8], tag: u32) -> &[u8] {
    checked_fields(msg)
        .filter_map(|(t, v)| match v {
            Value::Len(b) if t == tag => Some(b),
            _ => None,
        })
        .last()
        .unwrap_or(&[])
}

/// One `ScopeSpans`.
#[derive(Debug, Clone, Copy)]
pub struct ScopeSpansView<'a> {
    raw: &'a [u8],
    /// The `InstrumentationScope` message, when present.
    pub scope: Option<&'a [u8]>,
    /// `schema_url` (UTF-8, checked).
    pub schema_url: &'a [u8],
}

impl<'a> ScopeSpansView<'a> {
    fn read(raw: &'a [u8]) -> Self {
        let mut out = Self {
            raw,
            scope: None,
            schema_url: &[],
        };
        for (tag, v) in checked_fields(raw) {
            match (tag, v) {
                (1, Value::Len(m)) => out.scope = Some(m),
                (3, Value::Len(s)) => out.schema_url = s,
                _ => {}
            }
        }
        out
    }

    /// The spans, in wire order.
    pub fn spans(&self) -> impl Iterator<Item = SpanView<'a>> {
        checked_fields(self.raw).filter_map(|(tag, v)| match (tag, v) {
            (2, Value::Len(m)) => Some(SpanView::read(m)),
            _ => None,
        })
    }

    /// Spans in this scope.
    pub fn span_count(&self) -> usize {
        repeated(self.raw, 2).count()
    }
}

/// A span's `Status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusView<'a> {
    pub code: i32,
    /// UTF-8, checked.
    pub message: &'a [u8],
}

/// One span: its scalar fields read; attributes, events and links are read
/// from `raw` when they are written out.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanView<'a> {
    /// The span message.
    pub raw: &'a [u8],
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    /// UTF-8, checked.
    pub trace_state: &'a [u8],
    pub parent_span_id: &'a [u8],
    /// UTF-8, checked.
    pub name: &'a [u8],
    pub kind: i32,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub dropped_attributes_count: u32,
    pub dropped_events_count: u32,
    pub dropped_links_count: u32,
    pub status: Option<StatusView<'a>>,
    /// The part of `raw` from the first attribute to the last (other
    /// fields may be among them): read again for the document.
    pub attributes: &'a [u8],
    /// Likewise for the events (empty: none).
    pub events: &'a [u8],
    /// Likewise for the links (empty: none).
    pub links: &'a [u8],
}

impl<'a> SpanView<'a> {
    fn read(raw: &'a [u8]) -> Self {
        let mut s = SpanView {
            raw,
            ..Default::default()
        };
        // (start, end) in `raw` of the attributes, events and links.
        let mut ranges = [(usize::MAX, 0usize); 3];
        let mut it = fields(raw);
        loop {
            let start = raw.len() - it.buf.len();
            let Some(Ok((tag, v))) = it.next() else {
                break;
            };
            let end = raw.len() - it.buf.len();
            // Scalars: the last occurrence wins, as in prost.
            match (tag, v) {
                (1, Value::Len(b)) => s.trace_id = b,
                (2, Value::Len(b)) => s.span_id = b,
                (3, Value::Len(b)) => s.trace_state = b,
                (4, Value::Len(b)) => s.parent_span_id = b,
                (5, Value::Len(b)) => s.name = b,
                (6, Value::Varint(x)) => s.kind = x as i32,
                (7, Value::Fixed64(x)) => s.start_time_unix_nano = x,
                (8, Value::Fixed64(x)) => s.end_time_unix_nano = x,
                (9 | 11 | 13, _) => {
                    let r = &mut ranges[match tag {
                        9 => 0,
                        11 => 1,
                        _ => 2,
                    }];
                    r.0 = r.0.min(start);
                    r.1 = end;
                }
                (10, Value::Varint(x)) => s.dropped_attributes_count = x as u32,
                (12, Value::Varint(x)) => s.dropped_events_count = x as u32,
                (14, Value::Varint(x)) => s.dropped_links_count = x as u32,
                (15, Value::Len(m)) => {
                    let mut st = StatusView::default();
                    for (tag, v) in checked_fields(m) {
                        match (tag, v) {
                            (2, Value::Len(b)) => st.message = b,
                            (3, Value::Varint(x)) => st.code = x as i32,
                            _ => {}
                        }
                    }
                    s.status = Some(st);
                }
                _ => {}
            }
        }
        let part = |(a, b): (usize, usize)| if a < b { &raw[a..b] } else { &raw[..0] };
        s.attributes = part(ranges[0]);
        s.events = part(ranges[1]);
        s.links = part(ranges[2]);
        s
    }

    /// The span name (checked UTF-8; empty if it were not).
    pub fn name_str(&self) -> &'a str {
        std::str::from_utf8(self.name).unwrap_or_default()
    }
}

/// One `KeyValue`: (key, the `AnyValue` message when present).
pub fn key_value(m: &[u8]) -> (&[u8], Option<&[u8]>) {
    let mut key: &[u8] = &[];
    let mut value = None;
    for (tag, v) in checked_fields(m) {
        match (tag, v) {
            (1, Value::Len(b)) => key = b,
            (2, Value::Len(b)) => value = Some(b),
            _ => {}
        }
    }
    (key, value)
}

/// The value of an `AnyValue` message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Any<'a> {
    None,
    /// UTF-8, checked.
    String(&'a [u8]),
    Bool(bool),
    Int(i64),
    Double(f64),
    /// An `ArrayValue` message.
    Array(&'a [u8]),
    /// A `KeyValueList` message.
    KvList(&'a [u8]),
    Bytes(&'a [u8]),
    StringIndex(i32),
}

/// Reads an `AnyValue` message (at most one oneof field: checked).
pub fn any(m: &[u8]) -> Any<'_> {
    let mut out = Any::None;
    for (tag, v) in checked_fields(m) {
        out = match (tag, v) {
            (1, Value::Len(b)) => Any::String(b),
            (2, Value::Varint(x)) => Any::Bool(x != 0),
            (3, Value::Varint(x)) => Any::Int(x as i64),
            (4, Value::Fixed64(x)) => Any::Double(f64::from_bits(x)),
            (5, Value::Len(b)) => Any::Array(b),
            (6, Value::Len(b)) => Any::KvList(b),
            (7, Value::Len(b)) => Any::Bytes(b),
            (8, Value::Varint(x)) => Any::StringIndex(x as i32),
            _ => continue,
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_and_unusual_bytes_are_declined() {
        // Truncated length.
        assert_eq!(check_traces(&[0x0a, 0x05, 0x00]), Err(Declined));
        // Wrong wire type for resource_spans.
        assert_eq!(check_traces(&[0x08, 0x01]), Err(Declined));
        // Field number 0.
        assert_eq!(check_traces(&[0x00, 0x01]), Err(Declined));
        // A group.
        assert_eq!(check_traces(&[0x13, 0x14]), Err(Declined));
        // An unknown field is skipped: an empty request.
        assert_eq!(check_traces(&[0x10, 0x01]), Ok(0));
        assert_eq!(check_traces(&[]), Ok(0));
        // Overlong varint.
        assert_eq!(
            check_traces(&[0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            Err(Declined)
        );
    }
}
