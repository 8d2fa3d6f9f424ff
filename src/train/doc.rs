//! Documents read back from Elasticsearch, turned into the observations the
//! live sidecar builds from OTLP. The detector keys must come out identical,
//! so a model trained from history lands on the keys a warm-started sidecar
//! scores: the span key is (service, span name, span kind number) and the
//! metric series key hashes the `resource` object, the metric name and the
//! point `attributes` object *as the sidecar encoded them*. Those objects are
//! re-encoded here with the sidecar's own encoder rules, keeping the key order
//! the server returns (Elasticsearch returns `_source` as it was indexed).

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::detect::histogram::{summary_quantiles, Buckets, ExpSide, HistogramObs};
use crate::detect::keys::{key_hash, KeyHash};
use crate::detect::metric::PointValue;
use crate::export::document::{json_f64, json_i64, json_str, json_u64};
use crate::pipeline::process::UNKNOWN_SERVICE;

/// A JSON value that keeps the order of object keys (serde_json's `Value`
/// sorts them unless a crate-wide feature is switched on).
#[derive(Debug, Clone, PartialEq)]
pub enum Ordered {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(String),
    Arr(Vec<Ordered>),
    Obj(Vec<(String, Ordered)>),
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Ordered, E> {
                Ok(Ordered::Null)
            }
            fn visit_none<E>(self) -> Result<Ordered, E> {
                Ok(Ordered::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Ordered, E> {
                Ok(Ordered::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Ordered, E> {
                Ok(Ordered::U64(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Ordered, E> {
                Ok(Ordered::I64(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Ordered, E> {
                Ok(Ordered::F64(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Ordered, E> {
                Ok(Ordered::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Ordered, E> {
                Ok(Ordered::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = a.next_element()? {
                    out.push(v);
                }
                Ok(Ordered::Arr(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Ordered, A::Error> {
                let mut out: Vec<(String, Ordered)> = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, Ordered>()? {
                    out.push((k, v));
                }
                Ok(Ordered::Obj(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl Ordered {
    /// Appends the value the way `export::document` encodes attribute values.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Ordered::Null => out.extend_from_slice(b"null"),
            Ordered::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Ordered::U64(v) => json_u64(out, *v),
            Ordered::I64(v) => json_i64(out, *v),
            Ordered::F64(v) => json_f64(out, *v),
            Ordered::Str(s) => json_str(out, s),
            Ordered::Arr(items) => {
                out.push(b'[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    v.encode(out);
                }
                out.push(b']');
            }
            Ordered::Obj(kvs) => {
                out.push(b'{');
                for (i, (k, v)) in kvs.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    json_str(out, k);
                    out.push(b':');
                    v.encode(out);
                }
                out.push(b'}');
            }
        }
    }

    fn get(&self, key: &str) -> Option<&Ordered> {
        match self {
            Ordered::Obj(kvs) => kvs.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// The `resource` object of a document.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct ResourceSrc {
    #[serde(default)]
    pub attributes: Option<Ordered>,
    #[serde(default)]
    pub dropped_attributes_count: u32,
    #[serde(default)]
    pub schema_url: Option<String>,
}

impl ResourceSrc {
    /// `service.name`, as the live path reads it (a string attribute, else the default).
    pub fn service(&self) -> &str {
        match self.attributes.as_ref().and_then(|a| a.get("service.name")) {
            Some(Ordered::Str(s)) => s,
            _ => UNKNOWN_SERVICE,
        }
    }

    /// The bytes `export::document::encode_resource` wrote for this resource.
    pub fn encoded(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"attributes\":");
        match &self.attributes {
            Some(a @ Ordered::Obj(_)) => a.encode(&mut out),
            _ => out.extend_from_slice(b"{}"),
        }
        if self.dropped_attributes_count > 0 {
            out.extend_from_slice(b",\"dropped_attributes_count\":");
            json_u64(&mut out, u64::from(self.dropped_attributes_count));
        }
        if let Some(url) = self.schema_url.as_deref().filter(|u| !u.is_empty()) {
            out.extend_from_slice(b",\"schema_url\":");
            json_str(&mut out, url);
        }
        out.push(b'}');
        out
    }
}

/// Why one document could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DocError {
    #[error("@timestamp {0:?} is not an RFC 3339 time")]
    Timestamp(String),
    #[error("unknown span kind {0:?}")]
    Kind(String),
    #[error("metric {name:?}: {why}")]
    Metric { name: String, why: &'static str },
    #[error("{0}")]
    Json(String),
}

/// Parses `@timestamp` (RFC 3339, up to nanoseconds) into ns since the epoch.
pub fn parse_time(s: &str) -> Result<u64, DocError> {
    // The sidecar writes `…Z` (UTC) with nanoseconds; the weak form also
    // takes a time without the zone, read as UTC.
    let t = humantime::parse_rfc3339(s)
        .or_else(|_| humantime::parse_rfc3339_weak(s))
        .map_err(|_| DocError::Timestamp(s.to_string()))?;
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .map_err(|_| DocError::Timestamp(s.to_string()))
}

/// Span kind number from the name `export::document::span_kind_name` writes.
pub fn span_kind_number(name: &str) -> Result<i32, DocError> {
    Ok(match name {
        "Unspecified" => 0,
        "Internal" => 1,
        "Server" => 2,
        "Client" => 3,
        "Producer" => 4,
        "Consumer" => 5,
        other => return Err(DocError::Kind(other.to_string())),
    })
}

#[derive(Debug, serde::Deserialize)]
struct StatusSrc {
    #[serde(default)]
    code: Option<String>,
}

/// A span document's `_source` (the fields the detector needs).
#[derive(Debug, serde::Deserialize)]
pub struct SpanSrc {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    name: String,
    #[serde(default)]
    kind: Option<String>,
    duration: u64,
    #[serde(default)]
    status: Option<StatusSrc>,
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default)]
    resource: ResourceSrc,
}

/// A span ready for the detector.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRec {
    pub service: String,
    pub name: String,
    pub kind: i32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub duration_ns: u64,
    pub is_error: bool,
    pub trace_id: Vec<u8>,
}

impl SpanRec {
    /// The span detector key (as `SpanObs::key`).
    pub fn key(&self) -> KeyHash {
        self.obs().key()
    }

    /// The detector's view of this span.
    pub fn obs(&self) -> crate::detect::span::SpanObs<'_> {
        crate::detect::span::SpanObs {
            service: &self.service,
            name: &self.name,
            kind: self.kind,
            end_ns: self.end_ns,
            duration_ns: self.duration_ns,
            is_error: self.is_error,
            trace_id: &self.trace_id,
        }
    }
}

fn unhex(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return Vec::new();
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    b.chunks(2)
        .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_default()
}

impl SpanSrc {
    /// The span as the live path would observe it.
    pub fn into_rec(self) -> Result<SpanRec, DocError> {
        let start_ns = parse_time(&self.timestamp)?;
        let kind = span_kind_number(self.kind.as_deref().unwrap_or("Unspecified"))?;
        Ok(SpanRec {
            service: self.resource.service().to_string(),
            name: self.name,
            kind,
            start_ns,
            end_ns: start_ns.saturating_add(self.duration),
            duration_ns: self.duration,
            is_error: self
                .status
                .and_then(|s| s.code)
                .is_some_and(|c| c == "Error"),
            trace_id: self.trace_id.as_deref().map(unhex).unwrap_or_default(),
        })
    }
}

#[derive(Debug, serde::Deserialize)]
struct MetricMeta {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    temporality: Option<String>,
}

/// A metric point document's `_source`.
#[derive(Debug, serde::Deserialize)]
pub struct PointSrc {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    #[serde(default)]
    start_timestamp: Option<String>,
    metric: MetricMeta,
    metrics: Ordered,
    #[serde(default)]
    attributes: Option<Ordered>,
    #[serde(default)]
    resource: ResourceSrc,
}

/// A metric point ready for the detector.
#[derive(Debug, Clone, PartialEq)]
pub struct PointRec {
    pub service: String,
    pub metric: String,
    pub series: KeyHash,
    pub time_ns: u64,
    pub value: PointValue,
    /// What the quantile series of a histogram, exponential histogram or
    /// summary point are derived from (`None` for other points, and for an
    /// explicit histogram without bucket counts, as on the live path).
    pub quantiles: Option<QuantileSrc>,
}

/// The buckets of a stored histogram point, owned.
#[derive(Debug, Clone, PartialEq)]
pub enum BucketsSrc {
    Explicit {
        bounds: Vec<f64>,
        counts: Vec<u64>,
    },
    /// The document does not store `zero_threshold`: it is read as 0 (see
    /// docs/train.md), which only matters when a quantile's rank falls in
    /// the zero bucket.
    Exponential {
        scale: i32,
        zero_count: u64,
        positive: (i32, Vec<u64>),
        negative: (i32, Vec<u64>),
    },
}

/// What a histogram or summary document gives its quantile series.
#[derive(Debug, Clone, PartialEq)]
pub enum QuantileSrc {
    /// A histogram's buckets, turned into quantiles by
    /// `Detectors::histogram` exactly as on the live path.
    Histogram {
        buckets: BucketsSrc,
        cumulative: bool,
        start_ns: u64,
        min: Option<f64>,
        max: Option<f64>,
    },
    /// A summary's own values at `histogram::QUANTILES`.
    Summary([Option<f64>; 3]),
}

impl QuantileSrc {
    /// The live path's view of a histogram point (`None` for a summary).
    pub fn obs(&self) -> Option<HistogramObs<'_>> {
        let QuantileSrc::Histogram {
            buckets,
            cumulative,
            start_ns,
            min,
            max,
        } = self
        else {
            return None;
        };
        let buckets = match buckets {
            BucketsSrc::Explicit { bounds, counts } => Buckets::Explicit { bounds, counts },
            BucketsSrc::Exponential {
                scale,
                zero_count,
                positive,
                negative,
            } => Buckets::Exponential {
                scale: *scale,
                zero_count: *zero_count,
                zero_threshold: 0.0,
                positive: ExpSide {
                    offset: positive.0,
                    counts: &positive.1,
                },
                negative: ExpSide {
                    offset: negative.0,
                    counts: &negative.1,
                },
            },
        };
        Some(HistogramObs {
            buckets,
            cumulative: *cumulative,
            start_ns: *start_ns,
            min: *min,
            max: *max,
        })
    }
}

fn num(v: &Ordered) -> Option<f64> {
    match v {
        Ordered::U64(u) => Some(*u as f64),
        Ordered::I64(i) => Some(*i as f64),
        Ordered::F64(f) => Some(*f),
        // `json_f64` writes non-finite values as null.
        Ordered::Null => Some(f64::NAN),
        _ => None,
    }
}

fn u64_list(v: Option<&Ordered>) -> Option<Vec<u64>> {
    match v {
        None => Some(Vec::new()),
        Some(Ordered::Arr(items)) => items
            .iter()
            .map(|i| match i {
                Ordered::U64(c) => Some(*c),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn f64_list(v: Option<&Ordered>) -> Option<Vec<f64>> {
    match v {
        None => Some(Vec::new()),
        Some(Ordered::Arr(items)) => items.iter().map(num).collect(),
        _ => None,
    }
}

/// One side of a stored exponential histogram (absent: no buckets, as `exp_side(None)`).
fn exp_side(v: Option<&Ordered>) -> Option<(i32, Vec<u64>)> {
    match v {
        None => Some((0, Vec::new())),
        Some(side) => {
            let offset = match side.get("offset") {
                Some(Ordered::U64(o)) => i32::try_from(*o).ok()?,
                Some(Ordered::I64(o)) => i32::try_from(*o).ok()?,
                None => 0,
                _ => return None,
            };
            Some((offset, u64_list(side.get("bucket_counts"))?))
        }
    }
}

/// The quantile source of a histogram / summary value object, as
/// `export::document::point_value` wrote it.
fn quantile_src(
    ty: &str,
    raw: &Ordered,
    cumulative: bool,
    start_ns: u64,
) -> Result<Option<QuantileSrc>, &'static str> {
    let opt_num = |k| raw.get(k).and_then(num);
    Ok(match ty {
        "histogram" => {
            let counts = u64_list(raw.get("bucket_counts"))
                .ok_or("bucket_counts is not a list of integers")?;
            if counts.is_empty() {
                // The live path derives nothing from a point without buckets.
                return Ok(None);
            }
            let bounds = f64_list(raw.get("explicit_bounds"))
                .ok_or("explicit_bounds is not a list of numbers")?;
            Some(QuantileSrc::Histogram {
                buckets: BucketsSrc::Explicit { bounds, counts },
                cumulative,
                start_ns,
                min: opt_num("min"),
                max: opt_num("max"),
            })
        }
        "exponential_histogram" => {
            let scale = match raw.get("scale") {
                Some(Ordered::U64(s)) => i32::try_from(*s).ok(),
                Some(Ordered::I64(s)) => i32::try_from(*s).ok(),
                _ => None,
            }
            .ok_or("exponential histogram without an integer scale")?;
            let zero_count = match raw.get("zero_count") {
                Some(Ordered::U64(z)) => *z,
                None => 0,
                _ => return Err("zero_count is not an integer"),
            };
            let side = |k| exp_side(raw.get(k)).ok_or("positive / negative buckets are malformed");
            Some(QuantileSrc::Histogram {
                buckets: BucketsSrc::Exponential {
                    scale,
                    zero_count,
                    positive: side("positive")?,
                    negative: side("negative")?,
                },
                cumulative,
                start_ns,
                min: opt_num("min"),
                max: opt_num("max"),
            })
        }
        "summary" => {
            let pairs: Vec<(f64, f64)> = match raw.get("quantiles") {
                None => Vec::new(),
                Some(Ordered::Arr(items)) => items
                    .iter()
                    .map(|q| {
                        Some((
                            q.get("quantile").and_then(num)?,
                            q.get("value").and_then(num)?,
                        ))
                    })
                    .collect::<Option<_>>()
                    .ok_or("quantiles are not {quantile, value} numbers")?,
                Some(_) => return Err("quantiles is not a list"),
            };
            Some(QuantileSrc::Summary(summary_quantiles(pairs.into_iter())))
        }
        _ => None,
    })
}

/// The series key of the live path: hash of the encoded resource, the metric
/// name and the encoded point attributes.
pub fn series_key(resource_json: &[u8], metric: &str, attributes_json: &[u8]) -> KeyHash {
    key_hash(&[resource_json, metric.as_bytes(), attributes_json])
}

impl PointSrc {
    /// The point as the live path would observe it.
    pub fn into_rec(self) -> Result<PointRec, DocError> {
        let time_ns = parse_time(&self.timestamp)?;
        let start_ns = match &self.start_timestamp {
            Some(s) => parse_time(s)?,
            None => 0,
        };
        let name = self.metric.name;
        let bad = |why| DocError::Metric {
            name: name.clone(),
            why,
        };
        let raw = self
            .metrics
            .get(&name)
            .ok_or_else(|| bad("no value under metrics.<name>"))?;
        let cumulative = self.metric.temporality.as_deref() == Some("cumulative");
        let mut quantiles = None;
        let value = match self.metric.ty.as_str() {
            "gauge" => PointValue::Gauge(num(raw).ok_or_else(|| bad("value is not a number"))?),
            "sum" => {
                let v = num(raw).ok_or_else(|| bad("value is not a number"))?;
                if cumulative {
                    PointValue::CumulativeSum { value: v, start_ns }
                } else {
                    PointValue::DeltaSum(v)
                }
            }
            "histogram" | "exponential_histogram" | "summary" => {
                let count = match raw.get("count") {
                    Some(Ordered::U64(c)) => *c,
                    _ => return Err(bad("histogram without an integer count")),
                };
                let sum = raw.get("sum").and_then(num).unwrap_or(f64::NAN);
                // Buckets that cannot give quantiles leave the mean, as on
                // the live path (`Processor::derived_verdicts`).
                quantiles = quantile_src(&self.metric.ty, raw, cumulative, start_ns)
                    .unwrap_or_else(|why| {
                        tracing::debug!(metric = %name, why, "histogram document gives no quantiles; its mean is still learned");
                        None
                    });
                PointValue::Histogram {
                    count,
                    sum,
                    cumulative: cumulative || self.metric.ty == "summary",
                    start_ns,
                }
            }
            _ => return Err(bad("unknown metric.type")),
        };
        let res_json = self.resource.encoded();
        let mut attrs_json = Vec::with_capacity(128);
        match &self.attributes {
            Some(a @ Ordered::Obj(_)) => a.encode(&mut attrs_json),
            _ => attrs_json.extend_from_slice(b"{}"),
        }
        Ok(PointRec {
            service: self.resource.service().to_string(),
            series: series_key(&res_json, &name, &attrs_json),
            metric: name,
            time_ns,
            value,
            quantiles,
        })
    }
}

/// A log document's `_source`.
#[derive(Debug, serde::Deserialize)]
pub struct LogSrc {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    #[serde(default)]
    severity_number: i32,
    #[serde(default)]
    resource: ResourceSrc,
}

/// A log record ready for the detector.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRec {
    pub service: String,
    pub time_ns: u64,
    pub severity_number: i32,
}

impl LogSrc {
    /// The record as the live path would observe it.
    pub fn into_rec(self) -> Result<LogRec, DocError> {
        Ok(LogRec {
            time_ns: parse_time(&self.timestamp)?,
            service: self.resource.service().to_string(),
            severity_number: self.severity_number,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_values_re_encode_like_the_sidecar() {
        let text = r#"{"service.name":"cart","z":1,"a":-2,"f":1.5,"g":1.0,"b":true,"n":null,"l":[1,"x"],"kv":{"y":"q"}}"#;
        let v: Ordered = serde_json::from_str(text).unwrap();
        let mut out = Vec::new();
        v.encode(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), text);
    }

    fn point(metrics: &str, ty: &str) -> PointRec {
        let text = format!(
            r#"{{"@timestamp":"2023-11-14T22:13:20Z","metric":{{"name":"d","type":"{ty}","temporality":"cumulative"}},"metrics":{{"d":{metrics}}}}}"#
        );
        serde_json::from_str::<PointSrc>(&text)
            .unwrap()
            .into_rec()
            .expect("the point reads back")
    }

    #[test]
    fn histogram_documents_without_usable_buckets_keep_their_mean() {
        // No buckets (the live path derives nothing either), malformed
        // buckets: the mean is kept, without quantiles.
        for (m, ty) in [
            (r#"{"count":3,"sum":6.0}"#, "histogram"),
            (r#"{"count":3,"sum":6.0,"bucket_counts":"x"}"#, "histogram"),
            (
                r#"{"count":3,"sum":6.0,"scale":"x"}"#,
                "exponential_histogram",
            ),
        ] {
            let p = point(m, ty);
            assert_eq!(p.quantiles, None, "{m}");
            assert!(matches!(p.value, PointValue::Histogram { count: 3, .. }));
        }
        // A summary without quantiles has no quantile values.
        let s = point(r#"{"count":3,"sum":6.0,"quantiles":[]}"#, "summary");
        assert_eq!(s.quantiles, Some(QuantileSrc::Summary([None; 3])));
        // An exponential histogram: the zero threshold is not stored, read as 0.
        let e = point(
            r#"{"count":4,"scale":2,"zero_count":1,"sum":9.0,"positive":{"offset":-3,"bucket_counts":[1,2]}}"#,
            "exponential_histogram",
        );
        let q = e.quantiles.expect("exponential histogram quantile source");
        let obs = q.obs().expect("histogram obs");
        assert_eq!(
            obs.buckets,
            Buckets::Exponential {
                scale: 2,
                zero_count: 1,
                zero_threshold: 0.0,
                positive: ExpSide {
                    offset: -3,
                    counts: &[1, 2]
                },
                negative: ExpSide::default(),
            }
        );
        assert!(obs.cumulative);
    }

    #[test]
    fn times_parse_with_nanoseconds() {
        assert_eq!(
            parse_time("2023-11-14T22:13:20.123456789Z").unwrap(),
            1_700_000_000_123_456_789
        );
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000_000_000
        );
        assert!(parse_time("yesterday").is_err());
    }
}
