//! Request body decoding with limits: size as sent, size after gzip, and
//! clear errors naming the limit and the setting that raises it.

use std::io::Read;

use prost::Message;
use serde::de::DeserializeOwned;

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("request body exceeds receiver.max_request_bytes ({limit} bytes)")]
    BodyTooLarge { limit: usize },
    #[error("decompressed request exceeds receiver.max_decompressed_bytes ({limit} bytes)")]
    DecompressedTooLarge { limit: usize },
    #[error("invalid gzip body: {0}")]
    Gzip(String),
    #[error("unsupported Content-Encoding {0:?} (use gzip or none)")]
    UnsupportedEncoding(String),
    #[error("unsupported Content-Type {0:?} (use application/x-protobuf or application/json)")]
    UnsupportedMediaType(String),
    #[error("invalid protobuf: {0}")]
    Protobuf(String),
    #[error("invalid JSON: {0}")]
    Json(String),
}

/// Body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Protobuf,
    Json,
}

/// Reads the format from a Content-Type header value.
pub fn format_of(content_type: Option<&str>) -> Result<Format, DecodeError> {
    let raw = content_type.unwrap_or("");
    let essence = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Format::Protobuf),
        "application/json" => Ok(Format::Json),
        _ => Err(DecodeError::UnsupportedMediaType(raw.to_string())),
    }
}

/// Inflates a gzip body, refusing to produce more than `limit` bytes.
pub fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity((body.len() * 4).min(limit));
    let mut reader = flate2::read::MultiGzDecoder::new(body).take(limit as u64 + 1);
    reader
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Gzip(e.to_string()))?;
    if out.len() > limit {
        return Err(DecodeError::DecompressedTooLarge { limit });
    }
    Ok(out)
}

/// Undoes the Content-Encoding.
pub fn decompress(
    body: bytes::Bytes,
    encoding: Option<&str>,
    limit: usize,
) -> Result<bytes::Bytes, DecodeError> {
    match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("identity") => {
            if body.len() > limit {
                return Err(DecodeError::DecompressedTooLarge { limit });
            }
            Ok(body)
        }
        Some("gzip") | Some("x-gzip") => gunzip(&body, limit).map(bytes::Bytes::from),
        Some(other) => Err(DecodeError::UnsupportedEncoding(other.to_string())),
    }
}

/// Decodes an OTLP request in `format`.
pub fn decode<T: Message + Default + DeserializeOwned>(
    body: &[u8],
    format: Format,
) -> Result<T, DecodeError> {
    match format {
        Format::Protobuf => T::decode(body).map_err(|e| DecodeError::Protobuf(e.to_string())),
        Format::Json => {
            if body.iter().all(|b| b.is_ascii_whitespace()) {
                return Err(DecodeError::Json("empty body (send at least {})".into()));
            }
            serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_bomb_is_refused_at_the_cap() {
        let bomb = gz(&vec![0u8; 10 << 20]);
        assert!(bomb.len() < 100_000);
        assert_eq!(
            gunzip(&bomb, 1 << 20),
            Err(DecodeError::DecompressedTooLarge { limit: 1 << 20 })
        );
        assert_eq!(gunzip(&gz(b"hello"), 5).unwrap(), b"hello");
    }

    #[test]
    fn content_types() {
        assert_eq!(
            format_of(Some("application/x-protobuf")),
            Ok(Format::Protobuf)
        );
        assert_eq!(
            format_of(Some("application/json; charset=utf-8")),
            Ok(Format::Json)
        );
        assert!(matches!(
            format_of(Some("text/plain")),
            Err(DecodeError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            format_of(None),
            Err(DecodeError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn otlp_json_per_spec_decodes() {
        // The example of the OTLP specification: hex ids, string-encoded 64-bit ints, enum numbers.
        let json = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"my.service"}}]},
          "scopeSpans":[{"scope":{"name":"my.library","version":"1.0.0"},"spans":[{
            "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","parentSpanId":"eee19b7ec3c1b173",
            "name":"I'm a server span","startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000",
            "kind":2,"attributes":[{"key":"my.span.attr","value":{"intValue":"42"}}]}]}]}]}"#;
        let req: ExportTraceServiceRequest = decode(json, Format::Json).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.trace_id[0], 0x5b);
        assert_eq!(span.end_time_unix_nano, 1544712661000000000);
        assert_eq!(span.kind, 2);
    }

    #[test]
    fn malformed_bodies_are_clear_errors() {
        let e =
            decode::<ExportTraceServiceRequest>(&[0x0a, 0xff, 0xff], Format::Protobuf).unwrap_err();
        assert!(matches!(e, DecodeError::Protobuf(_)), "{e}");
        let e = decode::<ExportTraceServiceRequest>(b"{\"resourceSpans\": [", Format::Json)
            .unwrap_err();
        assert!(matches!(e, DecodeError::Json(_)), "{e}");
        let e = decode::<ExportTraceServiceRequest>(b"", Format::Json).unwrap_err();
        assert!(e.to_string().contains("empty body"));
        // An empty protobuf body is a valid, empty request.
        assert!(decode::<ExportTraceServiceRequest>(b"", Format::Protobuf).is_ok());
    }
}
