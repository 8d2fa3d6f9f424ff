//! `otel-anomaly train` and `otel-anomaly backfill`: flags, then the library.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use otel_anomaly::config::{self, Config, FlagOverrides};
use otel_anomaly::train::job::{self, TargetOverrides};
use otel_anomaly::train::{self as tr, TrainError};

/// Where to read from (flags override the config file's target).
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Configuration file (YAML): `train:`, `export.elasticsearch` or
    /// `export.elasticsearch_targets`, `detect` settings.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Environment to read (the data streams' namespace); config: environment.
    #[arg(long)]
    environment: Option<String>,
    /// Elasticsearch URL (replaces the environment's configured target).
    #[arg(long)]
    es: Option<String>,
    /// Elastic Cloud id (instead of --es).
    #[arg(long, conflicts_with = "es")]
    cloud_id: Option<String>,
    /// File holding an encoded API key (never the key itself on the command line).
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// Dataset part of the stream names `<signal>-<dataset>-<environment>`.
    #[arg(long)]
    dataset: Option<String>,
    /// Known incident windows to leave out (`START END [note]` per line); config: train.exclude_file.
    #[arg(long)]
    exclude: Option<PathBuf>,
    /// Documents per page; config: train.page_size.
    #[arg(long)]
    page_size: Option<usize>,
}

/// `train` options.
#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// How far back to read (e.g. 14d, 36h); config: train.since.
    #[arg(long)]
    since: Option<String>,
    /// Model file to write; config: train.out.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `backfill` options.
#[derive(Debug, Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Start of the range: an RFC 3339 time or a duration ago (7d).
    #[arg(long)]
    from: String,
    /// End of the range (default: now): an RFC 3339 time or a duration ago.
    #[arg(long)]
    to: Option<String>,
    /// Start from this model (e.g. one trained on the weeks before --from).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Print the events as JSON lines instead of pushing them.
    #[arg(long)]
    print: bool,
}

impl SourceArgs {
    fn overrides(&self) -> FlagOverrides {
        let mut f = FlagOverrides::default();
        f.set("environment", self.environment.as_ref());
        f.set(
            "train.exclude_file",
            self.exclude.as_ref().map(|p| p.display()),
        );
        f.set("train.page_size", self.page_size);
        f
    }

    fn target(&self) -> TargetOverrides {
        TargetOverrides {
            url: self.es.clone(),
            cloud_id: self.cloud_id.clone(),
            api_key_file: self.api_key_file.clone(),
            dataset: self.dataset.clone(),
        }
    }
}

fn load(
    source: &SourceArgs,
    mut flags: FlagOverrides,
    env: &BTreeMap<String, String>,
) -> Result<Config, ExitCode> {
    flags.0.extend(source.overrides().0);
    match config::resolve(source.config.as_deref(), env, &flags) {
        Ok(cfg) => {
            otel_anomaly::telemetry::init_logs(&cfg.settings.log, None);
            Ok(cfg)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(2))
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

fn fail(e: TrainError) -> ExitCode {
    eprintln!("error: {e}");
    match e {
        TrainError::Config(_) | TrainError::Exclude(_) => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

/// Runs `train`.
pub fn train(args: &TrainArgs, env: &BTreeMap<String, String>) -> ExitCode {
    let mut flags = FlagOverrides::default();
    flags.set("train.since", args.since.as_ref());
    flags.set("train.out", args.out.as_ref().map(|p| p.display()));
    let cfg = match load(&args.source, flags, env) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let progress = std::io::stderr().is_terminal();
    match rt.block_on(job::train(&cfg, &args.source.target(), progress)) {
        Ok(summary) => {
            println!("{summary}");
            for (index, paging) in &summary.paging {
                println!("{index}: read with {paging:?}");
            }
            for index in &summary.missing {
                println!("{index}: not found (nothing of this signal learned)");
            }
            println!(
                "model for environment {:?} written to {} ({} span keys, {} metric series)",
                cfg.settings.environment,
                cfg.settings.train.out.display(),
                summary.state.0,
                summary.state.1
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// An RFC 3339 time, or a duration before now.
fn parse_when(s: &str, now_ns: u64) -> Result<u64, String> {
    if let Ok(t) = tr::doc::parse_time(s) {
        return Ok(t);
    }
    humantime::parse_duration(s)
        .map(|d: Duration| now_ns.saturating_sub(d.as_nanos() as u64))
        .map_err(|_| {
            format!(
                "{s:?} is neither an RFC 3339 time (2026-11-10T14:00:00Z) nor a duration ago (7d)"
            )
        })
}

/// Runs `backfill`.
pub fn backfill(args: &BackfillArgs, env: &BTreeMap<String, String>) -> ExitCode {
    let cfg = match load(&args.source, FlagOverrides::default(), env) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let now = tr::now_ns();
    let range = match (
        parse_when(&args.from, now),
        args.to
            .as_deref()
            .map(|t| parse_when(t, now))
            .unwrap_or(Ok(now)),
    ) {
        (Ok(f), Ok(t)) if f < t => (f, t),
        (Ok(_), Ok(_)) => {
            eprintln!("error: --from must be before --to");
            return ExitCode::from(2);
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let progress = std::io::stderr().is_terminal();
    let result = rt.block_on(async {
        let (summary, events) = job::backfill(
            &cfg,
            &args.source.target(),
            range,
            args.model.as_deref(),
            progress,
        )
        .await?;
        let n = events.len();
        if args.print {
            for e in &events {
                println!(
                    "{}",
                    serde_json::json!({
                        "event_id": e.event_id, "service": e.service, "signal": e.signal,
                        "key": e.key, "start_unix_nano": e.start_unix_nano,
                        "end_unix_nano": e.end_unix_nano, "score": e.score,
                        "explanation": e.explanation, "backfilled": e.backfilled,
                    })
                );
            }
        } else {
            job::push_events(&cfg, events, Duration::from_secs(120)).await?;
        }
        Ok::<_, TrainError>((summary, n))
    });
    match result {
        Ok((summary, n)) => {
            eprintln!("{summary}");
            eprintln!(
                "{n} backfilled anomaly events {}",
                if args.print {
                    "printed"
                } else {
                    "pushed to the aggregator"
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
