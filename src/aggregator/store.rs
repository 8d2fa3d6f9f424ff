//! The aggregator's store: SQLite (bundled) in the data directory, with
//! numbered migrations, one transaction per pushed batch, and retention.
//!
//! # Incident rule
//!
//! An event joins an **open** incident of the **same environment** when
//! 1. the times overlap, allowing `resolve_after` of slack on each side
//!    (`incident.start - R <= event.end` and `event.start <= incident.end + R`), and
//! 2. the keys are related: the incident already has a member of the same
//!    service, or one of its services calls or is called by the event's service
//!    (edges from the sidecars' heartbeats).
//!
//! Among several candidates the highest-ranked wins; otherwise a new incident
//! opens. An incident's rank is its maximum score, then the sum of its scores.
//! An incident **resolves** once no member event has ended within
//! `resolve_after` of now.
//!
//! A level shift makes its key fire interval after interval. So that it does
//! not hold an incident open, or reopen one, forever: an incident still open
//! `max_duration` after it started is resolved as **persistent**, and each of
//! its keys is **muted**. Events of a muted key are stored and linked to that
//! incident (counted as `muted_events`) without reopening it or opening
//! another, until the key has been quiet for `resolve_after`; after that, its
//! next event is judged afresh.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Transaction};
use serde::Serialize;

use crate::push::proto::{AnomalyEvent, HeartbeatRequest, Severity};

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("cannot create the data directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("store schema version {found} is newer than this binary knows ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("store query failed: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store lock poisoned")]
    Poisoned,
}

/// Schema, one entry a version; a store is brought up to date at open.
const MIGRATIONS: &[&str] = &[
    // 1: events, incidents, service graph, sidecars, muted keys.
    "CREATE TABLE events (
        event_id TEXT NOT NULL,
        environment TEXT NOT NULL,
        cluster TEXT NOT NULL,
        service TEXT NOT NULL,
        signal TEXT NOT NULL,
        key TEXT NOT NULL,
        start_ns INTEGER NOT NULL,
        end_ns INTEGER NOT NULL,
        score REAL NOT NULL,
        severity INTEGER NOT NULL,
        explanation TEXT NOT NULL,
        baseline REAL NOT NULL,
        observed REAL NOT NULL,
        unit TEXT NOT NULL,
        exemplars TEXT NOT NULL,
        sidecar TEXT NOT NULL,
        received_ns INTEGER NOT NULL,
        incident_id INTEGER,
        -- Ids are unique per environment, so one environment's sidecar cannot shadow another's events.
        PRIMARY KEY (environment, event_id)
     );
     CREATE INDEX events_env_end ON events(environment, end_ns);
     CREATE INDEX events_incident ON events(incident_id);
     CREATE TABLE incidents (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        environment TEXT NOT NULL,
        open INTEGER NOT NULL,
        persistent INTEGER NOT NULL DEFAULT 0,
        start_ns INTEGER NOT NULL,
        end_ns INTEGER NOT NULL,
        resolved_ns INTEGER,
        max_score REAL NOT NULL,
        sum_score REAL NOT NULL,
        severity INTEGER NOT NULL,
        event_count INTEGER NOT NULL,
        muted_events INTEGER NOT NULL DEFAULT 0,
        top_event_id TEXT NOT NULL,
        top_service TEXT NOT NULL,
        top_signal TEXT NOT NULL,
        top_key TEXT NOT NULL,
        explanation TEXT NOT NULL,
        updated_ns INTEGER NOT NULL,
        alert_resolved_sent INTEGER NOT NULL DEFAULT 0
     );
     CREATE INDEX incidents_env_open ON incidents(environment, open);
     CREATE TABLE incident_services (
        incident_id INTEGER NOT NULL,
        service TEXT NOT NULL,
        PRIMARY KEY (incident_id, service)
     );
     CREATE TABLE edges (
        environment TEXT NOT NULL,
        caller TEXT NOT NULL,
        callee TEXT NOT NULL,
        calls INTEGER NOT NULL,
        last_seen_ns INTEGER NOT NULL,
        PRIMARY KEY (environment, caller, callee)
     );
     CREATE TABLE sidecars (
        sidecar_id TEXT NOT NULL,
        environment TEXT NOT NULL,
        cluster TEXT NOT NULL,
        version TEXT NOT NULL,
        keys_tracked INTEGER NOT NULL,
        queue_depth INTEGER NOT NULL,
        export_lag_seconds REAL NOT NULL,
        events_buffered INTEGER NOT NULL,
        events_dropped INTEGER NOT NULL,
        last_seen_ns INTEGER NOT NULL,
        PRIMARY KEY (environment, sidecar_id)
     );
     CREATE TABLE key_mutes (
        environment TEXT NOT NULL,
        key TEXT NOT NULL,
        incident_id INTEGER NOT NULL,
        last_end_ns INTEGER NOT NULL,
        PRIMARY KEY (environment, key)
     );",
    // 2: silences and maintenance windows set through the API.
    "CREATE TABLE silences (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        environment TEXT NOT NULL,
        service TEXT,
        starts_ns INTEGER NOT NULL,
        ends_ns INTEGER NOT NULL,
        comment TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_ns INTEGER NOT NULL
     );
     CREATE INDEX silences_ends ON silences(ends_ns);",
    // Events found by `otel-anomaly backfill` (past data): listed, never incidents.
    "ALTER TABLE events ADD COLUMN backfilled INTEGER NOT NULL DEFAULT 0;",
];

/// Grouping and retention rules, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub resolve_after: Duration,
    pub max_duration: Duration,
    pub retention: Duration,
}

fn ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(ns)
        .unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Name of a severity rank.
pub fn severity_name(rank: i64) -> &'static str {
    match rank {
        3 => "critical",
        2 => "major",
        1 => "minor",
        _ => "unspecified",
    }
}

/// Rank of a severity name.
pub fn severity_rank(name: &str) -> Option<i64> {
    match name {
        "minor" => Some(1),
        "major" => Some(2),
        "critical" => Some(3),
        _ => None,
    }
}

/// What a stored batch changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct IngestOutcome {
    pub accepted: u32,
    pub duplicates: u32,
    /// Incidents opened by this batch.
    pub opened: Vec<i64>,
    /// Incidents that gained events (opened ones included).
    pub updated: Vec<i64>,
}

/// An incident as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Incident {
    pub id: i64,
    pub environment: String,
    /// "open" or "resolved".
    pub state: &'static str,
    /// Resolved because it lasted `max_duration` (a level shift); its keys are muted until quiet.
    pub persistent: bool,
    pub start_ms: i64,
    pub end_ms: i64,
    pub resolved_ms: Option<i64>,
    pub max_score: f64,
    pub sum_score: f64,
    pub severity: &'static str,
    pub event_count: i64,
    pub muted_events: i64,
    pub services: Vec<String>,
    pub top_event_id: String,
    pub service: String,
    pub signal: String,
    pub key: String,
    pub explanation: String,
}

/// A stored anomaly event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    pub event_id: String,
    pub environment: String,
    pub cluster: String,
    pub service: String,
    pub signal: String,
    pub key: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub score: f64,
    pub severity: &'static str,
    pub explanation: String,
    pub baseline: f64,
    pub observed: f64,
    pub unit: String,
    pub exemplar_trace_ids: Vec<String>,
    pub sidecar_id: String,
    pub incident_id: Option<i64>,
    /// Found by `otel-anomaly backfill` in past data (never part of an incident).
    pub backfilled: bool,
}

/// An incident with its member events (oldest first): its timeline.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IncidentDetail {
    pub incident: Incident,
    pub events: Vec<Event>,
}

/// A sidecar's last heartbeat.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sidecar {
    pub sidecar_id: String,
    pub environment: String,
    pub cluster: String,
    pub version: String,
    pub keys_tracked: i64,
    pub queue_depth: i64,
    pub export_lag_seconds: f64,
    pub events_buffered: i64,
    pub events_dropped: i64,
    pub last_seen_ms: i64,
    /// Heard from within `ingest.sidecar_stale_after`.
    pub healthy: bool,
}

/// One environment at a glance.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EnvironmentSummary {
    pub name: String,
    pub open_incidents: i64,
    pub top_open_score: Option<f64>,
    pub incidents_total: i64,
    pub events_total: i64,
    pub sidecars: i64,
    pub sidecars_healthy: i64,
}

/// A service graph edge.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Edge {
    pub caller: String,
    pub callee: String,
    pub calls: i64,
}

/// A silence or maintenance window: alerts of matching incidents are not sent while it is active.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Silence {
    pub id: i64,
    /// "silence" or "maintenance".
    pub kind: String,
    pub environment: String,
    /// Only incidents with a member event of this service (all services if absent).
    pub service: Option<String>,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub comment: String,
    pub created_by: String,
    /// Active now.
    pub active: bool,
}

impl Silence {
    /// Whether this silence covers `inc` (ignoring time).
    pub fn matches(&self, inc: &Incident) -> bool {
        self.environment == inc.environment
            && self
                .service
                .as_ref()
                .is_none_or(|s| inc.services.contains(s))
    }
}

/// A new silence, as checked by the API.
#[derive(Debug, Clone)]
pub struct NewSilence {
    pub kind: String,
    pub environment: String,
    pub service: Option<String>,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub comment: String,
    pub created_by: String,
}

/// Filter of incident lists.
#[derive(Debug, Clone, Default)]
pub struct IncidentFilter {
    pub environment: Option<String>,
    pub service: Option<String>,
    /// Lowest severity rank.
    pub min_severity: Option<i64>,
    /// Only open (true) or only resolved (false).
    pub open: Option<bool>,
    /// Overlapping [since, until], ms.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: usize,
}

/// Filter of event lists.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub environment: Option<String>,
    pub service: Option<String>,
    pub min_severity: Option<i64>,
    pub incident_id: Option<i64>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: usize,
}

/// The SQLite store.
pub struct Store {
    conn: Mutex<Connection>,
    rules: Rules,
}

const INCIDENT_COLUMNS: &str = "id, environment, open, persistent, start_ns, end_ns, resolved_ns, max_score, sum_score, severity, event_count, muted_events, top_event_id, top_service, top_signal, top_key, explanation";
const EVENT_COLUMNS: &str = "event_id, environment, cluster, service, signal, key, start_ns, end_ns, score, severity, explanation, baseline, observed, unit, exemplars, sidecar, incident_id, backfilled";

fn ms(v: i64) -> i64 {
    v / 1_000_000
}

fn incident_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Incident> {
    Ok(Incident {
        id: r.get(0)?,
        environment: r.get(1)?,
        state: if r.get::<_, i64>(2)? == 1 {
            "open"
        } else {
            "resolved"
        },
        persistent: r.get::<_, i64>(3)? == 1,
        start_ms: ms(r.get(4)?),
        end_ms: ms(r.get(5)?),
        resolved_ms: r.get::<_, Option<i64>>(6)?.map(ms),
        max_score: r.get(7)?,
        sum_score: r.get(8)?,
        severity: severity_name(r.get(9)?),
        event_count: r.get(10)?,
        muted_events: r.get(11)?,
        services: Vec::new(),
        top_event_id: r.get(12)?,
        service: r.get(13)?,
        signal: r.get(14)?,
        key: r.get(15)?,
        explanation: r.get(16)?,
    })
}

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let exemplars: String = r.get(14)?;
    Ok(Event {
        event_id: r.get(0)?,
        environment: r.get(1)?,
        cluster: r.get(2)?,
        service: r.get(3)?,
        signal: r.get(4)?,
        key: r.get(5)?,
        start_ms: ms(r.get(6)?),
        end_ms: ms(r.get(7)?),
        score: r.get(8)?,
        severity: severity_name(r.get(9)?),
        explanation: r.get(10)?,
        baseline: r.get(11)?,
        observed: r.get(12)?,
        unit: r.get(13)?,
        exemplar_trace_ids: serde_json::from_str(&exemplars).unwrap_or_default(),
        sidecar_id: r.get(15)?,
        incident_id: r.get(16)?,
        backfilled: r.get(17)?,
    })
}

fn severity_of_event(ev: &AnomalyEvent) -> i64 {
    match Severity::try_from(ev.severity) {
        Ok(Severity::Critical) => 3,
        Ok(Severity::Major) => 2,
        Ok(Severity::Minor) => 1,
        _ => 0,
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path` and applies pending migrations.
    pub fn open(path: &Path, rules: Rules) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let mut conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        // WAL: readers don't block the writer; NORMAL sync is durable across process crashes.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
            tracing::info!(version = i + 1, "store migrated");
        }
        Ok(Store {
            conn: Mutex::new(conn),
            rules,
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        f(&mut conn)
    }

    /// Stores a checked batch in one transaction and groups its events into incidents.
    pub fn ingest(
        &self,
        sidecar: &str,
        events: &[AnomalyEvent],
        now: i64,
    ) -> Result<IngestOutcome, StoreError> {
        let rules = self.rules;
        self.with(|conn| {
            let tx = conn.transaction()?;
            let mut out = IngestOutcome::default();
            let mut order: Vec<&AnomalyEvent> = events.iter().collect();
            order.sort_by_key(|e| (e.start_unix_nano, e.end_unix_nano));
            for ev in order {
                let exemplars = serde_json::to_string(&ev.exemplar_trace_ids).unwrap_or_else(|_| "[]".into());
                let inserted = tx.execute(
                    "INSERT OR IGNORE INTO events (event_id, environment, cluster, service, signal, key, start_ns, end_ns, score, severity, explanation, baseline, observed, unit, exemplars, sidecar, received_ns, backfilled)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
                    params![
                        ev.event_id, ev.environment, ev.cluster, ev.service, ev.signal, ev.key,
                        to_i64(ev.start_unix_nano), to_i64(ev.end_unix_nano), ev.score, severity_of_event(ev),
                        ev.explanation, ev.baseline, ev.observed, ev.unit, exemplars, sidecar, now,
                        ev.backfilled
                    ],
                )?;
                if inserted == 0 {
                    out.duplicates += 1;
                    continue;
                }
                out.accepted += 1;
                if ev.backfilled {
                    // What the detector would have said about the past: no incident, no alert now.
                    continue;
                }
                let id = group(&tx, ev, rules, now, &mut out)?;
                tx.execute(
                    "UPDATE events SET incident_id = ?1 WHERE environment = ?2 AND event_id = ?3",
                    params![id, ev.environment, ev.event_id],
                )?;
            }
            tx.commit()?;
            out.updated.sort_unstable();
            out.updated.dedup();
            Ok(out)
        })
    }

    /// Records a heartbeat and its service graph edges.
    pub fn heartbeat(&self, hb: &HeartbeatRequest, now: i64) -> Result<(), StoreError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO sidecars (sidecar_id, environment, cluster, version, keys_tracked, queue_depth, export_lag_seconds, events_buffered, events_dropped, last_seen_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (environment, sidecar_id) DO UPDATE SET cluster = ?3, version = ?4, keys_tracked = ?5, queue_depth = ?6,
                   export_lag_seconds = ?7, events_buffered = ?8, events_dropped = ?9, last_seen_ns = ?10",
                params![
                    hb.sidecar_id, hb.environment, hb.cluster, hb.version, to_i64(hb.keys_tracked),
                    to_i64(hb.queue_depth), hb.export_lag_seconds, to_i64(hb.events_buffered),
                    to_i64(hb.events_dropped), now
                ],
            )?;
            for e in &hb.edges {
                tx.execute(
                    "INSERT INTO edges (environment, caller, callee, calls, last_seen_ns) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (environment, caller, callee) DO UPDATE SET calls = ?4, last_seen_ns = ?5",
                    params![hb.environment, e.caller, e.callee, to_i64(e.calls), now],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Resolves quiet incidents, closes persistent ones (muting their keys) and applies retention.
    /// Returns the incidents it resolved.
    pub fn sweep(&self, now: i64) -> Result<Vec<i64>, StoreError> {
        let r = self.rules;
        self.with(|conn| {
            let tx = conn.transaction()?;
            let quiet_before = now.saturating_sub(ns(r.resolve_after));
            let mut resolved: Vec<i64> = {
                let mut st = tx.prepare("SELECT id FROM incidents WHERE open = 1 AND end_ns < ?1")?;
                let ids = st.query_map([quiet_before], |row| row.get(0))?;
                ids.collect::<Result<_, _>>()?
            };
            tx.execute(
                "UPDATE incidents SET open = 0, resolved_ns = ?1, updated_ns = ?1 WHERE open = 1 AND end_ns < ?2",
                params![now, quiet_before],
            )?;
            let started_before = now.saturating_sub(ns(r.max_duration));
            let persistent: Vec<i64> = {
                let mut st = tx.prepare("SELECT id FROM incidents WHERE open = 1 AND start_ns < ?1")?;
                let ids = st.query_map([started_before], |row| row.get(0))?;
                ids.collect::<Result<_, _>>()?
            };
            for id in &persistent {
                tx.execute(
                    "UPDATE incidents SET open = 0, persistent = 1, resolved_ns = ?1, updated_ns = ?1 WHERE id = ?2",
                    params![now, id],
                )?;
                tx.execute(
                    "INSERT INTO key_mutes (environment, key, incident_id, last_end_ns)
                     SELECT environment, key, incident_id, MAX(end_ns) FROM events WHERE incident_id = ?1 GROUP BY environment, key
                     ON CONFLICT (environment, key) DO UPDATE SET incident_id = excluded.incident_id, last_end_ns = excluded.last_end_ns",
                    [id],
                )?;
            }
            resolved.extend(persistent);
            tx.execute("DELETE FROM key_mutes WHERE last_end_ns < ?1", [quiet_before])?;
            let cutoff = now.saturating_sub(ns(r.retention));
            tx.execute(
                "DELETE FROM events WHERE end_ns < ?1 AND (incident_id IS NULL OR incident_id IN (SELECT id FROM incidents WHERE open = 0))",
                [cutoff],
            )?;
            tx.execute(
                "DELETE FROM incident_services WHERE incident_id IN (SELECT id FROM incidents WHERE open = 0 AND resolved_ns < ?1)",
                [cutoff],
            )?;
            tx.execute("DELETE FROM incidents WHERE open = 0 AND resolved_ns < ?1", [cutoff])?;
            tx.execute("DELETE FROM edges WHERE last_seen_ns < ?1", [cutoff])?;
            tx.execute("DELETE FROM sidecars WHERE last_seen_ns < ?1", [cutoff])?;
            tx.execute("DELETE FROM silences WHERE ends_ns < ?1", [cutoff])?;
            tx.commit()?;
            resolved.sort_unstable();
            Ok(resolved)
        })
    }

    /// Incidents matching `f`, highest rank first (open before resolved).
    pub fn incidents(&self, f: &IncidentFilter) -> Result<Vec<Incident>, StoreError> {
        let mut sql = format!("SELECT {INCIDENT_COLUMNS} FROM incidents i WHERE 1 = 1");
        let mut args: Vec<Value> = Vec::new();
        if let Some(e) = &f.environment {
            args.push(Value::Text(e.clone()));
            sql += &format!(" AND environment = ?{}", args.len());
        }
        if let Some(s) = &f.service {
            args.push(Value::Text(s.clone()));
            sql += &format!(
                " AND EXISTS (SELECT 1 FROM incident_services s WHERE s.incident_id = i.id AND s.service = ?{})",
                args.len()
            );
        }
        if let Some(sev) = f.min_severity {
            args.push(Value::Integer(sev));
            sql += &format!(" AND severity >= ?{}", args.len());
        }
        if let Some(open) = f.open {
            args.push(Value::Integer(i64::from(open)));
            sql += &format!(" AND open = ?{}", args.len());
        }
        if let Some(since) = f.since_ms {
            args.push(Value::Integer(since.saturating_mul(1_000_000)));
            sql += &format!(" AND end_ns >= ?{}", args.len());
        }
        if let Some(until) = f.until_ms {
            args.push(Value::Integer(until.saturating_mul(1_000_000)));
            sql += &format!(" AND start_ns <= ?{}", args.len());
        }
        args.push(Value::Integer(f.limit.max(1) as i64));
        sql += &format!(
            " ORDER BY open DESC, max_score DESC, sum_score DESC, id DESC LIMIT ?{}",
            args.len()
        );
        self.with(|conn| {
            let mut list: Vec<Incident> = {
                let mut st = conn.prepare(&sql)?;
                let rows = st.query_map(params_from_iter(args), incident_row)?;
                rows.collect::<Result<_, _>>()?
            };
            for inc in &mut list {
                inc.services = services_of(conn, inc.id)?;
            }
            Ok(list)
        })
    }

    /// One incident and its events.
    pub fn incident(&self, id: i64) -> Result<Option<IncidentDetail>, StoreError> {
        self.with(|conn| {
            let sql = format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ?1");
            let Some(mut incident) = conn.query_row(&sql, [id], incident_row).optional()? else {
                return Ok(None);
            };
            incident.services = services_of(conn, id)?;
            let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE incident_id = ?1 ORDER BY start_ns, event_id LIMIT 5000");
            let mut st = conn.prepare(&sql)?;
            let events = st.query_map([id], event_row)?.collect::<Result<_, _>>()?;
            Ok(Some(IncidentDetail { incident, events }))
        })
    }

    /// Events matching `f`, newest first.
    pub fn events(&self, f: &EventFilter) -> Result<Vec<Event>, StoreError> {
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE 1 = 1");
        let mut args: Vec<Value> = Vec::new();
        let mut add = |clause: &str, v: Value, sql: &mut String| {
            args.push(v);
            *sql += &format!(" AND {clause} ?{}", args.len());
        };
        if let Some(e) = &f.environment {
            add("environment =", Value::Text(e.clone()), &mut sql);
        }
        if let Some(s) = &f.service {
            add("service =", Value::Text(s.clone()), &mut sql);
        }
        if let Some(sev) = f.min_severity {
            add("severity >=", Value::Integer(sev), &mut sql);
        }
        if let Some(id) = f.incident_id {
            add("incident_id =", Value::Integer(id), &mut sql);
        }
        if let Some(since) = f.since_ms {
            add(
                "end_ns >=",
                Value::Integer(since.saturating_mul(1_000_000)),
                &mut sql,
            );
        }
        if let Some(until) = f.until_ms {
            add(
                "start_ns <=",
                Value::Integer(until.saturating_mul(1_000_000)),
                &mut sql,
            );
        }
        args.push(Value::Integer(f.limit.max(1) as i64));
        sql += &format!(" ORDER BY end_ns DESC, event_id LIMIT ?{}", args.len());
        self.with(|conn| {
            let mut st = conn.prepare(&sql)?;
            let rows = st.query_map(params_from_iter(args), event_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Sidecars by environment and id.
    pub fn sidecars(&self, now: i64, stale_after: Duration) -> Result<Vec<Sidecar>, StoreError> {
        let fresh_after = now.saturating_sub(ns(stale_after));
        self.with(|conn| {
            let mut st = conn.prepare(
                "SELECT sidecar_id, environment, cluster, version, keys_tracked, queue_depth, export_lag_seconds, events_buffered, events_dropped, last_seen_ns
                 FROM sidecars ORDER BY environment, sidecar_id",
            )?;
            let rows = st.query_map([], |r| {
                let last: i64 = r.get(9)?;
                Ok(Sidecar {
                    sidecar_id: r.get(0)?,
                    environment: r.get(1)?,
                    cluster: r.get(2)?,
                    version: r.get(3)?,
                    keys_tracked: r.get(4)?,
                    queue_depth: r.get(5)?,
                    export_lag_seconds: r.get(6)?,
                    events_buffered: r.get(7)?,
                    events_dropped: r.get(8)?,
                    last_seen_ms: ms(last),
                    healthy: last >= fresh_after,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// The service graph of an environment.
    pub fn edges(&self, environment: &str) -> Result<Vec<Edge>, StoreError> {
        self.with(|conn| {
            let mut st = conn.prepare(
                "SELECT caller, callee, calls FROM edges WHERE environment = ?1 ORDER BY caller, callee",
            )?;
            let rows = st.query_map([environment], |r| {
                Ok(Edge {
                    caller: r.get(0)?,
                    callee: r.get(1)?,
                    calls: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Every environment with a token, data or a sidecar.
    pub fn environments(
        &self,
        known: &BTreeSet<String>,
        now: i64,
        stale_after: Duration,
    ) -> Result<Vec<EnvironmentSummary>, StoreError> {
        let fresh_after = now.saturating_sub(ns(stale_after));
        self.with(|conn| {
            let mut names = known.clone();
            {
                let mut st = conn.prepare(
                    "SELECT environment FROM incidents UNION SELECT environment FROM sidecars",
                )?;
                for n in st.query_map([], |r| r.get::<_, String>(0))? {
                    names.insert(n?);
                }
            }
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                let (open, top): (i64, Option<f64>) = conn.query_row(
                    "SELECT COUNT(*), MAX(max_score) FROM incidents WHERE environment = ?1 AND open = 1",
                    [&name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                let total: i64 = conn.query_row(
                    "SELECT COUNT(*) FROM incidents WHERE environment = ?1",
                    [&name],
                    |r| r.get(0),
                )?;
                let events: i64 = conn.query_row(
                    "SELECT COUNT(*) FROM events WHERE environment = ?1",
                    [&name],
                    |r| r.get(0),
                )?;
                let (sidecars, healthy): (i64, i64) = conn.query_row(
                    "SELECT COUNT(*), COALESCE(SUM(last_seen_ns >= ?2), 0) FROM sidecars WHERE environment = ?1",
                    params![name, fresh_after],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                out.push(EnvironmentSummary {
                    name,
                    open_incidents: open,
                    top_open_score: top,
                    incidents_total: total,
                    events_total: events,
                    sidecars,
                    sidecars_healthy: healthy,
                });
            }
            Ok(out)
        })
    }

    /// Incidents the alerter should send: open ones at or above `min_severity`, and resolved
    /// ones whose resolution it has not delivered yet.
    pub fn alertable(&self, min_severity: i64) -> Result<Vec<Incident>, StoreError> {
        self.with(|conn| {
            let sql = format!(
                "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE severity >= ?1 AND (open = 1 OR alert_resolved_sent = 0) ORDER BY id LIMIT 10000"
            );
            let mut list: Vec<Incident> = {
                let mut st = conn.prepare(&sql)?;
                let rows = st.query_map([min_severity], incident_row)?;
                rows.collect::<Result<_, _>>()?
            };
            for inc in &mut list {
                inc.services = services_of(conn, inc.id)?;
            }
            Ok(list)
        })
    }

    /// Marks resolutions as delivered.
    pub fn mark_resolved_sent(&self, ids: &[i64]) -> Result<(), StoreError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            for id in ids {
                tx.execute(
                    "UPDATE incidents SET alert_resolved_sent = 1 WHERE id = ?1 AND open = 0",
                    [id],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Stores a silence; returns it.
    pub fn add_silence(&self, new: &NewSilence, now: i64) -> Result<Silence, StoreError> {
        let id = self.with(|conn| {
            conn.execute(
                "INSERT INTO silences (kind, environment, service, starts_ns, ends_ns, comment, created_by, created_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    new.kind, new.environment, new.service, new.starts_ms.saturating_mul(1_000_000),
                    new.ends_ms.saturating_mul(1_000_000), new.comment, new.created_by, now
                ],
            )?;
            Ok(conn.last_insert_rowid())
        })?;
        self.silences(now, true)?
            .into_iter()
            .find(|s| s.id == id)
            .ok_or(StoreError::Sql(rusqlite::Error::QueryReturnedNoRows))
    }

    /// Silences not yet ended (and, with `ended_too`, those ended within the retention).
    pub fn silences(&self, now: i64, ended_too: bool) -> Result<Vec<Silence>, StoreError> {
        let cutoff = if ended_too { 0 } else { now };
        self.with(|conn| {
            let mut st = conn.prepare(
                "SELECT id, kind, environment, service, starts_ns, ends_ns, comment, created_by FROM silences
                 WHERE ends_ns > ?1 ORDER BY starts_ns, id",
            )?;
            let rows = st.query_map([cutoff], |r| {
                let (starts, ends): (i64, i64) = (r.get(4)?, r.get(5)?);
                Ok(Silence {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    environment: r.get(2)?,
                    service: r.get(3)?,
                    starts_ms: ms(starts),
                    ends_ms: ms(ends),
                    comment: r.get(6)?,
                    created_by: r.get(7)?,
                    active: starts <= now && now < ends,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Ends a silence now; false if there is none with this id.
    pub fn end_silence(&self, id: i64, now: i64) -> Result<bool, StoreError> {
        self.with(|conn| {
            let n = conn.execute(
                "UPDATE silences SET ends_ns = MIN(ends_ns, ?1), starts_ns = MIN(starts_ns, ?1) WHERE id = ?2",
                params![now, id],
            )?;
            Ok(n == 1)
        })
    }

    /// Number of stored events (all environments).
    pub fn event_count(&self) -> Result<i64, StoreError> {
        self.with(|conn| Ok(conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?))
    }
}

fn services_of(conn: &Connection, id: i64) -> Result<Vec<String>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT service FROM incident_services WHERE incident_id = ?1 ORDER BY service",
    )?;
    let rows = st.query_map([id], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Puts one new event into an incident (see the module docs); returns the incident id.
fn group(
    tx: &Transaction<'_>,
    ev: &AnomalyEvent,
    rules: Rules,
    now: i64,
    out: &mut IngestOutcome,
) -> Result<i64, StoreError> {
    let r = ns(rules.resolve_after);
    let start = to_i64(ev.start_unix_nano);
    let end = to_i64(ev.end_unix_nano);
    let severity = severity_of_event(ev);

    // A muted key (from a persistent incident) stays with it while it keeps firing.
    let muted: Option<(i64, i64)> = tx
        .query_row(
            "SELECT incident_id, last_end_ns FROM key_mutes WHERE environment = ?1 AND key = ?2",
            params![ev.environment, ev.key],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    if let Some((incident, last_end)) = muted {
        if start <= last_end.saturating_add(r) {
            tx.execute(
                "UPDATE key_mutes SET last_end_ns = MAX(last_end_ns, ?1) WHERE environment = ?2 AND key = ?3",
                params![end, ev.environment, ev.key],
            )?;
            tx.execute(
                "UPDATE incidents SET muted_events = muted_events + 1, updated_ns = ?1 WHERE id = ?2",
                params![now, incident],
            )?;
            out.updated.push(incident);
            return Ok(incident);
        }
        tx.execute(
            "DELETE FROM key_mutes WHERE environment = ?1 AND key = ?2",
            params![ev.environment, ev.key],
        )?;
    }

    let candidate: Option<(i64, f64)> = tx
        .query_row(
            "SELECT i.id, i.max_score FROM incidents i
             WHERE i.environment = ?1 AND i.open = 1
               AND i.start_ns - ?2 <= ?4 AND ?3 <= i.end_ns + ?2
               AND EXISTS (
                 SELECT 1 FROM incident_services s WHERE s.incident_id = i.id AND (
                   s.service = ?5
                   OR EXISTS (SELECT 1 FROM edges e WHERE e.environment = i.environment AND (
                        (e.caller = s.service AND e.callee = ?5) OR (e.caller = ?5 AND e.callee = s.service)))))
             ORDER BY i.max_score DESC, i.sum_score DESC, i.id LIMIT 1",
            params![ev.environment, r, start, end, ev.service],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let id = match candidate {
        Some((id, max_score)) => {
            tx.execute(
                "UPDATE incidents SET start_ns = MIN(start_ns, ?1), end_ns = MAX(end_ns, ?2), sum_score = sum_score + ?3,
                   max_score = MAX(max_score, ?3), severity = MAX(severity, ?4), event_count = event_count + 1, updated_ns = ?5
                 WHERE id = ?6",
                params![start, end, ev.score, severity, now, id],
            )?;
            if ev.score > max_score {
                tx.execute(
                    "UPDATE incidents SET top_event_id = ?1, top_service = ?2, top_signal = ?3, top_key = ?4, explanation = ?5 WHERE id = ?6",
                    params![ev.event_id, ev.service, ev.signal, ev.key, ev.explanation, id],
                )?;
            }
            id
        }
        None => {
            tx.execute(
                "INSERT INTO incidents (environment, open, start_ns, end_ns, max_score, sum_score, severity, event_count,
                   top_event_id, top_service, top_signal, top_key, explanation, updated_ns)
                 VALUES (?1, 1, ?2, ?3, ?4, ?4, ?5, 1, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    ev.environment, start, end, ev.score, severity, ev.event_id, ev.service, ev.signal,
                    ev.key, ev.explanation, now
                ],
            )?;
            let id = tx.last_insert_rowid();
            out.opened.push(id);
            id
        }
    };
    tx.execute(
        "INSERT OR IGNORE INTO incident_services (incident_id, service) VALUES (?1, ?2)",
        params![id, ev.service],
    )?;
    out.updated.push(id);
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::proto::ServiceEdge;

    const S: i64 = 1_000_000_000;
    const T0: i64 = 1_700_000_000 * S;

    fn rules() -> Rules {
        Rules {
            resolve_after: Duration::from_secs(300),
            max_duration: Duration::from_secs(3600),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }

    fn ev(id: &str, env: &str, service: &str, key: &str, start_s: i64, score: f64) -> AnomalyEvent {
        AnomalyEvent {
            event_id: id.into(),
            environment: env.into(),
            service: service.into(),
            signal: "traces".into(),
            key: key.into(),
            start_unix_nano: (T0 + start_s * S) as u64,
            end_unix_nano: (T0 + (start_s + 60) * S) as u64,
            score,
            severity: if score >= 75.0 {
                3
            } else if score >= 50.0 {
                2
            } else {
                1
            },
            explanation: format!("{key} is slow"),
            ..Default::default()
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("a.sqlite"), rules()).unwrap();
        (dir, s)
    }

    fn all(s: &Store) -> Vec<Incident> {
        s.incidents(&IncidentFilter {
            limit: 100,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn same_service_groups_other_environment_and_unrelated_service_do_not() {
        let (_d, s) = store();
        let out = s
            .ingest(
                "sc",
                &[
                    ev("1", "prod", "cart", "cart / GET", 0, 80.0),
                    ev("2", "prod", "cart", "cart / POST", 30, 60.0),
                    ev("3", "dev", "cart", "cart / GET", 0, 90.0),
                    ev("4", "prod", "search", "search / q", 10, 40.0),
                ],
                T0,
            )
            .unwrap();
        assert_eq!(out.accepted, 4);
        assert_eq!(out.opened.len(), 3);
        let list = all(&s);
        assert_eq!(list.len(), 3);
        let prod_cart = list
            .iter()
            .find(|i| i.environment == "prod" && i.service == "cart")
            .unwrap();
        assert_eq!(prod_cart.event_count, 2);
        assert_eq!(prod_cart.max_score, 80.0);
        assert_eq!(prod_cart.sum_score, 140.0);
        assert_eq!(prod_cart.severity, "critical");
        assert_eq!(prod_cart.key, "cart / GET");
        // ranked: dev (90) first, then prod cart (80), then search (40)
        assert_eq!(
            list.iter().map(|i| i.max_score).collect::<Vec<_>>(),
            [90.0, 80.0, 40.0]
        );
    }

    #[test]
    fn service_graph_links_caller_and_callee_but_time_gap_splits() {
        let (_d, s) = store();
        s.heartbeat(
            &HeartbeatRequest {
                sidecar_id: "sc".into(),
                environment: "prod".into(),
                edges: vec![ServiceEdge {
                    caller: "frontend".into(),
                    callee: "payment".into(),
                    calls: 10,
                }],
                ..Default::default()
            },
            T0,
        )
        .unwrap();
        s.ingest(
            "sc",
            &[ev("1", "prod", "payment", "payment / Charge", 0, 90.0)],
            T0,
        )
        .unwrap();
        s.ingest(
            "sc",
            &[ev(
                "2",
                "prod",
                "frontend",
                "frontend / GET /checkout",
                20,
                70.0,
            )],
            T0,
        )
        .unwrap();
        // 400 s after the first event ended: beyond resolve_after (300 s) → new incident
        s.ingest(
            "sc",
            &[ev("3", "prod", "payment", "payment / Charge", 460, 95.0)],
            T0,
        )
        .unwrap();
        let list = all(&s);
        assert_eq!(list.len(), 2, "{list:#?}");
        let first = list.iter().find(|i| i.event_count == 2).unwrap();
        assert_eq!(first.services, ["frontend", "payment"]);
    }

    #[test]
    fn retried_batch_is_idempotent() {
        let (_d, s) = store();
        let batch = [
            ev("a", "prod", "cart", "k", 0, 80.0),
            ev("b", "prod", "cart", "k", 60, 70.0),
        ];
        assert_eq!(s.ingest("sc", &batch, T0).unwrap().accepted, 2);
        let again = s.ingest("sc", &batch, T0).unwrap();
        assert_eq!((again.accepted, again.duplicates), (0, 2));
        assert_eq!(s.event_count().unwrap(), 2);
        assert_eq!(all(&s)[0].event_count, 2);
        // The same id in another environment is another event.
        let other = s
            .ingest("sc2", &[ev("a", "dev", "cart", "k", 0, 80.0)], T0)
            .unwrap();
        assert_eq!((other.accepted, other.duplicates), (1, 0));
    }

    #[test]
    fn quiet_incident_resolves_and_survives_reopen_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sqlite");
        {
            let s = Store::open(&path, rules()).unwrap();
            s.ingest("sc", &[ev("1", "prod", "cart", "k", 0, 80.0)], T0)
                .unwrap();
            assert!(
                s.sweep(T0 + 300 * S).unwrap().is_empty(),
                "still within resolve_after"
            );
            assert_eq!(s.sweep(T0 + 361 * S).unwrap().len(), 1);
        }
        let s = Store::open(&path, rules()).unwrap();
        let list = all(&s);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].state, "resolved");
        assert_eq!(s.alertable(1).unwrap().len(), 1, "resolution not yet sent");
        s.mark_resolved_sent(&[list[0].id]).unwrap();
        assert!(s.alertable(1).unwrap().is_empty());
    }

    #[test]
    fn level_shift_does_not_reopen_forever() {
        let (_d, s) = store();
        // The key fires every minute for three hours (max_duration is one hour).
        let mut resolved = Vec::new();
        for m in 0..180 {
            let t = m * 60;
            s.ingest(
                "sc",
                &[ev(&format!("e{m}"), "prod", "db", "db / query", t, 70.0)],
                T0,
            )
            .unwrap();
            resolved.extend(s.sweep(T0 + (t + 60) * S).unwrap());
        }
        let list = all(&s);
        assert_eq!(list.len(), 1, "one incident for the whole shift: {list:#?}");
        assert!(list[0].persistent);
        assert_eq!(list[0].state, "resolved");
        assert_eq!(list[0].event_count + list[0].muted_events, 180);
        assert_eq!(resolved.len(), 1);
        // Another service's anomaly meanwhile still opens its own incident.
        s.ingest(
            "sc",
            &[ev("x", "prod", "cart", "cart / GET", 180 * 60, 90.0)],
            T0,
        )
        .unwrap();
        assert_eq!(all(&s).len(), 2);
        // After the key is quiet for resolve_after, its next event is judged afresh.
        let later = 180 * 60 + 600;
        s.sweep(T0 + later * S).unwrap();
        s.ingest(
            "sc",
            &[ev("y", "prod", "db", "db / query", later, 70.0)],
            T0,
        )
        .unwrap();
        assert_eq!(all(&s).len(), 3);
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 48, ..Default::default() })]
        /// Whatever arrives, in whatever batches: every event belongs to one incident of its
        /// environment, and each incident's count, max and sum are those of its members.
        #[test]
        fn incident_aggregates_match_their_members(
            evs in proptest::collection::vec((0..2usize, 0..4usize, 0..7200i64, 25.0..100.0f64), 1..40),
            split in 1..5usize,
        ) {
            let (_d, s) = store();
            let events: Vec<AnomalyEvent> = evs
                .iter()
                .enumerate()
                .map(|(i, (env, svc, t, score))| {
                    let svc = format!("s{svc}");
                    ev(&i.to_string(), ["dev", "prod"][*env], &svc, &format!("{svc} / op"), *t, *score)
                })
                .collect();
            for chunk in events.chunks(split) {
                s.ingest("sc", chunk, T0).unwrap();
            }
            let list = all(&s);
            let mut seen = 0;
            for inc in &list {
                let d = s.incident(inc.id).unwrap().unwrap();
                proptest::prop_assert!(!d.events.is_empty());
                proptest::prop_assert!(d.events.iter().all(|e| e.environment == inc.environment));
                proptest::prop_assert_eq!(d.events.len() as i64, inc.event_count);
                let max = d.events.iter().map(|e| e.score).fold(f64::MIN, f64::max);
                let sum: f64 = d.events.iter().map(|e| e.score).sum();
                proptest::prop_assert!((inc.max_score - max).abs() < 1e-9);
                proptest::prop_assert!((inc.sum_score - sum).abs() < 1e-6);
                let mut services: Vec<String> = d.events.iter().map(|e| e.service.clone()).collect();
                services.sort();
                services.dedup();
                proptest::prop_assert_eq!(&services, &inc.services);
                seen += d.events.len();
            }
            proptest::prop_assert_eq!(seen, events.len());
        }
    }

    #[test]
    fn silences_match_by_environment_and_service_and_end() {
        let (_d, s) = store();
        let now = T0;
        let new = |service: Option<&str>, from_s: i64| NewSilence {
            kind: "maintenance".into(),
            environment: "prod".into(),
            service: service.map(str::to_string),
            starts_ms: ms(T0 + from_s * S),
            ends_ms: ms(T0 + 3600 * S),
            comment: "c".into(),
            created_by: "t".into(),
        };
        let a = s.add_silence(&new(Some("cart"), -1), now).unwrap();
        let later = s.add_silence(&new(None, 600), now).unwrap();
        assert!(a.active && !later.active);
        s.ingest(
            "sc",
            &[
                ev("1", "prod", "cart", "k", 0, 80.0),
                ev("2", "dev", "cart", "k", 0, 80.0),
            ],
            T0,
        )
        .unwrap();
        let list = all(&s);
        let prod = list.iter().find(|i| i.environment == "prod").unwrap();
        let dev = list.iter().find(|i| i.environment == "dev").unwrap();
        assert!(a.matches(prod) && !a.matches(dev));
        assert!(s.end_silence(a.id, now + S).unwrap());
        assert!(!s.end_silence(999, now).unwrap());
        let left = s.silences(now + 2 * S, false).unwrap();
        assert_eq!(left.iter().map(|x| x.id).collect::<Vec<_>>(), [later.id]);
    }

    #[test]
    fn filters_and_retention() {
        let (_d, s) = store();
        s.ingest(
            "sc",
            &[
                ev("1", "prod", "cart", "k", 0, 30.0),
                ev("2", "dev", "search", "q", 0, 80.0),
            ],
            T0,
        )
        .unwrap();
        let f = |f: IncidentFilter| {
            s.incidents(&IncidentFilter { limit: 10, ..f })
                .unwrap()
                .len()
        };
        assert_eq!(
            f(IncidentFilter {
                environment: Some("prod".into()),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            f(IncidentFilter {
                service: Some("search".into()),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            f(IncidentFilter {
                min_severity: Some(2),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            f(IncidentFilter {
                since_ms: Some(ms(T0 + 3600 * S)),
                ..Default::default()
            }),
            0
        );
        assert_eq!(
            f(IncidentFilter {
                until_ms: Some(ms(T0 + 10 * S)),
                ..Default::default()
            }),
            2
        );
        let evs = s
            .events(&EventFilter {
                environment: Some("dev".into()),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].severity, "critical");
        // 8 days later everything is past retention
        s.sweep(T0 + 300 * S + 600 * S).unwrap();
        s.sweep(T0 + 8 * 24 * 3600 * S).unwrap();
        assert_eq!(s.event_count().unwrap(), 0);
        assert!(all(&s).is_empty());
    }
}
