//! REST API (JSON), live stream (Server-Sent Events), OpenAPI document and the
//! embedded dashboard. Everything but `/healthz` needs reader credentials.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, MethodRouter};
use axum::Router;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use super::auth;
use super::config::ApiAuth;
use super::store::{now_ns, severity_rank, EventFilter, IncidentFilter, NewSilence, StoreError};
use super::AppState;

/// The OpenAPI document of this API.
pub const OPENAPI_YAML: &str = include_str!("openapi.yaml");
const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

/// Most rows one list call returns.
const MAX_LIMIT: usize = 1000;

type Shared = Arc<AppState>;

/// API errors, as `{"error": "…"}` with a status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("store unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("store task failed")]
    Task,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Store(_) | ApiError::Task => StatusCode::SERVICE_UNAVAILABLE,
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "api request failed");
        }
        json_response(status, &serde_json::json!({ "error": self.to_string() }))
    }
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn ok(value: &impl serde::Serialize) -> Response {
    json_response(StatusCode::OK, value)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::Task)?
        .map_err(ApiError::from)
}

/// A time in a query: RFC 3339 or milliseconds since the epoch.
fn parse_time(name: &str, v: &Option<String>) -> Result<Option<i64>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(Some(ms));
    }
    humantime::parse_rfc3339_weak(v)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| Some(d.as_millis() as i64))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{name}={v:?}: give RFC 3339 (2026-01-31T12:00:00Z) or milliseconds since the epoch"
            ))
        })
}

fn parse_severity(v: &Option<String>) -> Result<Option<i64>, ApiError> {
    match v {
        None => Ok(None),
        Some(s) => severity_rank(s).map(Some).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "severity={s:?}: give minor, major or critical (the lowest to include)"
            ))
        }),
    }
}

fn parse_limit(v: Option<usize>, default: usize) -> Result<usize, ApiError> {
    match v {
        None => Ok(default),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::BadRequest(format!(
            "limit={n}: must be 1 to {MAX_LIMIT}"
        ))),
    }
}

/// Query of `GET /api/v1/incidents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentQuery {
    environment: Option<String>,
    service: Option<String>,
    severity: Option<String>,
    state: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
}

async fn incidents(
    State(st): State<Shared>,
    Query(q): Query<IncidentQuery>,
) -> Result<Response, ApiError> {
    let open = match q.state.as_deref() {
        None | Some("all") => None,
        Some("open") => Some(true),
        Some("resolved") => Some(false),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "state={other:?}: give open, resolved or all"
            )))
        }
    };
    let filter = IncidentFilter {
        environment: q.environment,
        service: q.service,
        min_severity: parse_severity(&q.severity)?,
        open,
        since_ms: parse_time("since", &q.since)?,
        until_ms: parse_time("until", &q.until)?,
        limit: parse_limit(q.limit, 100)?,
    };
    let store = st.store.clone();
    let list = blocking(move || store.incidents(&filter)).await?;
    Ok(ok(&list))
}

async fn incident(State(st): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("incident id {id:?} is not a number")))?;
    let store = st.store.clone();
    match blocking(move || store.incident(id)).await? {
        Some(detail) => Ok(ok(&detail)),
        None => Err(ApiError::NotFound(format!("incident {id}"))),
    }
}

/// Query of `GET /api/v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    environment: Option<String>,
    service: Option<String>,
    severity: Option<String>,
    incident: Option<i64>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
}

async fn events(
    State(st): State<Shared>,
    Query(q): Query<EventQuery>,
) -> Result<Response, ApiError> {
    let filter = EventFilter {
        environment: q.environment,
        service: q.service,
        min_severity: parse_severity(&q.severity)?,
        incident_id: q.incident,
        since_ms: parse_time("since", &q.since)?,
        until_ms: parse_time("until", &q.until)?,
        limit: parse_limit(q.limit, 200)?,
    };
    let store = st.store.clone();
    let list = blocking(move || store.events(&filter)).await?;
    Ok(ok(&list))
}

async fn environments(State(st): State<Shared>) -> Result<Response, ApiError> {
    let store = st.store.clone();
    let known = st.environments.clone();
    let stale = st.stale_after;
    let list = blocking(move || store.environments(&known, now_ns(), stale)).await?;
    Ok(ok(&list))
}

async fn graph(State(st): State<Shared>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let store = st.store.clone();
    let edges = blocking(move || store.edges(&name)).await?;
    Ok(ok(&edges))
}

async fn sidecars(State(st): State<Shared>) -> Result<Response, ApiError> {
    let store = st.store.clone();
    let stale = st.stale_after;
    let list = blocking(move || store.sidecars(now_ns(), stale)).await?;
    Ok(ok(&list))
}

async fn stream(State(st): State<Shared>) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let hello =
        futures_util::stream::once(async { Ok(SseEvent::default().event("hello").data("{}")) });
    let updates = BroadcastStream::new(st.updates.subscribe()).map(|item| {
        Ok(match item {
            Ok(update) => {
                let data = serde_json::to_string(&update).unwrap_or_else(|_| "{}".into());
                SseEvent::default().event("update").data(data)
            }
            // A slow reader missed updates: tell it to reload everything.
            Err(BroadcastStreamRecvError::Lagged(n)) => SseEvent::default()
                .event("resync")
                .data(format!("{{\"missed\":{n}}}")),
        })
    });
    let stop = st.shutdown.clone().cancelled_owned();
    Sse::new(hello.chain(updates).take_until(stop))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn is_admin(st: &AppState, headers: &axum::http::HeaderMap) -> bool {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    st.admin_token
        .as_ref()
        .is_some_and(|t| auth::reader(&super::config::ApiAuth::Bearer(t.clone()), header))
}

fn require_admin(st: &AppState, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    if st.admin_token.is_none() {
        return Err(ApiError::Forbidden(
            "silences are read-only here: set http.admin_token_file to allow writes".into(),
        ));
    }
    if !is_admin(st, headers) {
        return Err(ApiError::Forbidden(
            "creating or ending silences needs the admin bearer token (http.admin_token_file)"
                .into(),
        ));
    }
    Ok(())
}

/// Body of `POST /api/v1/silences`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceRequest {
    #[serde(default)]
    kind: Option<String>,
    environment: String,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    starts_at: Option<serde_json::Value>,
    ends_at: serde_json::Value,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    created_by: String,
}

fn time_value(name: &str, v: &serde_json::Value) -> Result<i64, ApiError> {
    match v {
        serde_json::Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| ApiError::BadRequest(format!("{name}: not an integer"))),
        serde_json::Value::String(s) => {
            parse_time(name, &Some(s.clone()))?.ok_or_else(|| ApiError::BadRequest(name.into()))
        }
        _ => Err(ApiError::BadRequest(format!(
            "{name}: give RFC 3339 or milliseconds since the epoch"
        ))),
    }
}

async fn silences(State(st): State<Shared>) -> Result<Response, ApiError> {
    let store = st.store.clone();
    let list = blocking(move || store.silences(now_ns(), false)).await?;
    Ok(ok(&list))
}

async fn create_silence(
    State(st): State<Shared>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require_admin(&st, &headers)?;
    let req: SilenceRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid silence: {e}")))?;
    let kind = req.kind.unwrap_or_else(|| "silence".into());
    if !matches!(kind.as_str(), "silence" | "maintenance") {
        return Err(ApiError::BadRequest(format!(
            "kind {kind:?}: give silence or maintenance"
        )));
    }
    if req.environment.is_empty() || req.service.as_ref().is_some_and(|s| s.is_empty()) {
        return Err(ApiError::BadRequest(
            "environment (and service, if given) must not be empty".into(),
        ));
    }
    let now_ms = now_ns() / 1_000_000;
    let starts_ms = match &req.starts_at {
        Some(v) => time_value("starts_at", v)?,
        None => now_ms,
    };
    let ends_ms = time_value("ends_at", &req.ends_at)?;
    if ends_ms <= starts_ms || ends_ms <= now_ms {
        return Err(ApiError::BadRequest(
            "ends_at must be after starts_at and in the future".into(),
        ));
    }
    if req.comment.len() > 4096 || req.created_by.len() > 256 {
        return Err(ApiError::BadRequest(
            "comment or created_by too long".into(),
        ));
    }
    let new = NewSilence {
        kind,
        environment: req.environment,
        service: req.service,
        starts_ms,
        ends_ms,
        comment: req.comment,
        created_by: req.created_by,
    };
    let store = st.store.clone();
    let silence = blocking(move || store.add_silence(&new, now_ns())).await?;
    tracing::info!(id = silence.id, environment = %silence.environment, kind = %silence.kind, "silence created");
    let _ = st
        .updates
        .send(super::LiveUpdate::Silence { id: silence.id });
    Ok(json_response(StatusCode::CREATED, &silence))
}

async fn end_silence(
    State(st): State<Shared>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&st, &headers)?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("silence id {id:?} is not a number")))?;
    let store = st.store.clone();
    if !blocking(move || store.end_silence(id, now_ns())).await? {
        return Err(ApiError::NotFound(format!("silence {id}")));
    }
    let _ = st.updates.send(super::LiveUpdate::Silence { id });
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/yaml"),
        )],
        OPENAPI_YAML,
    )
        .into_response()
}

async fn metrics(State(st): State<Shared>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &st.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn require_reader(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if auth::reader(&st.api_auth, header) || is_admin(&st, req.headers()) {
        return next.run(req).await;
    }
    let mut resp = json_response(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({ "error": "reader credentials required" }),
    );
    if matches!(st.api_auth, ApiAuth::Basic { .. }) {
        // Lets a browser ask for the user and password itself.
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"otel-anomaly\", charset=\"UTF-8\""),
        );
    }
    resp
}

/// Every authenticated route: path and handler. The OpenAPI test checks each path is documented.
pub fn routes() -> Vec<(&'static str, MethodRouter<Shared>)> {
    vec![
        (
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        ),
        (
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        ),
        (
            "/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        ),
        ("/metrics", get(metrics)),
        ("/api/v1/openapi.yaml", get(openapi)),
        ("/api/v1/environments", get(environments)),
        ("/api/v1/environments/{name}/graph", get(graph)),
        ("/api/v1/incidents", get(incidents)),
        ("/api/v1/incidents/{id}", get(incident)),
        ("/api/v1/events", get(events)),
        ("/api/v1/sidecars", get(sidecars)),
        ("/api/v1/stream", get(stream)),
        ("/api/v1/silences", get(silences).post(create_silence)),
        ("/api/v1/silences/{id}", delete(end_silence)),
    ]
}

/// The HTTP router.
pub fn router(state: Shared) -> Router {
    let mut protected: Router<Shared> = Router::new();
    for (path, handler) in routes() {
        protected = protected.route(path, handler);
    }
    let protected = protected.layer(middleware::from_fn_with_state(
        state.clone(),
        require_reader,
    ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(protected)
        .fallback(|| async {
            json_response(
                StatusCode::NOT_FOUND,
                &serde_json::json!({ "error": "no such route; see /api/v1/openapi.yaml" }),
            )
        })
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
}
