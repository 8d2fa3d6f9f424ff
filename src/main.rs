//! Command line: parse, load the configuration, call into the library.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use otel_anomaly::config::{self, Config, FlagOverrides};
use tokio_util::sync::CancellationToken;

mod train_cli;

/// Streaming anomaly detection for OpenTelemetry data.
#[derive(Debug, Parser)]
#[command(name = "otel-anomaly", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sidecar: receive OTLP, score every span and point, write to Elasticsearch (or NDJSON files).
    Sidecar {
        /// Configuration file (YAML); every key can also be set by OTEL_ANOMALY_<PATH> variables.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Start from a model written by `otel-anomaly train` (config: detect.model).
        #[arg(long)]
        model: Option<PathBuf>,
        #[command(flatten)]
        flags: CommonFlags,
    },
    /// Learn from history: read an environment's documents from Elasticsearch
    /// (read-only key) and write a model snapshot for `sidecar --model`.
    Train(train_cli::TrainArgs),
    /// Score a past time range from Elasticsearch and push the anomaly
    /// events to the aggregator, marked as backfilled.
    Backfill(train_cli::BackfillArgs),
    /// Check a configuration file (with the environment's overrides) and print the resolved settings.
    CheckConfig {
        /// Configuration file (YAML).
        file: PathBuf,
    },
    /// Run the aggregator: push API for sidecars, incidents, REST API, dashboard, alerts.
    Aggregator {
        /// Aggregator configuration file (YAML).
        #[arg(short, long)]
        config: PathBuf,
        /// Check the configuration, print it and exit.
        #[arg(long)]
        check: bool,
    },
    /// Run the sidecar on embedded defaults with synthetic services and an injected latency fault.
    Demo {
        /// Stop after this long (e.g. 3m, 90s).
        #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Inject the fault after this long.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        fault_after: Duration,
        /// Print the top anomalies this often.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        report_every: Duration,
        #[command(flatten)]
        flags: CommonFlags,
    },
    /// Run the trace-fault benchmark: synthetic span streams with injected faults
    /// through the span detector; prints precision, recall, time to detect and false alerts.
    Faultbench {
        /// Number of span keys.
        #[arg(long, default_value_t = 100)]
        keys: usize,
        /// Simulated time after the warm-up (e.g. 24h, 3h).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Warm-up without faults, not scored.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        warmup: Duration,
        /// Mean spans per second per key.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// RNG seed (runs are reproducible).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Send OTLP load (benchmarks): pre-encoded realistic payloads at a rate or flat out.
    Loadgen(LoadgenArgs),
    /// Null Elasticsearch/OTLP output for benchmarks: answers bulk requests with success and counts documents.
    #[command(hide = true)]
    BenchSink(BenchSinkArgs),
    /// Replay recorded data through the detectors, as they would run live.
    Replay {
        #[command(subcommand)]
        what: ReplayCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ReplayCommand {
    /// Run the metric detector over a NAB-style corpus, write NAB results files and/or score them.
    Nab(NabArgs),
    /// Score a recorded OTLP capture (NDJSON, one OTLP/JSON export request per
    /// line, as the Collector's file exporter writes) and print the anomaly events.
    Otlp {
        /// The capture file.
        file: PathBuf,
        /// Configuration file whose `detect` settings to use (defaults otherwise).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
}

/// `replay nab` arguments.
#[derive(Debug, Args)]
struct NabArgs {
    /// Data directory holding `<family>/<file>.csv` files (`timestamp,value`).
    #[arg(long)]
    data: PathBuf,
    /// Write results to `OUT/<NAME>/<family>/<NAME>_<file>.csv`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Detector name in the results layout (no `_`).
    #[arg(long, default_value = otel_anomaly::replay::DEFAULT_NAME)]
    name: String,
    /// Score with the NAB v1.1 rules against these windows (`combined_windows.json`).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Print the standard / low-FP / low-FN scores and a per-file table (needs --labels).
    #[arg(long)]
    score: bool,
    /// Cost profiles (default: DATA/../config/profiles.json).
    #[arg(long)]
    profiles: Option<PathBuf>,
    /// Score the existing results in `RESULTS/<NAME>/` instead of running the detector.
    #[arg(long, conflicts_with = "out")]
    results: Option<PathBuf>,
}

/// Options of `loadgen`.
#[derive(Debug, Args)]
struct LoadgenArgs {
    /// OTLP receiver address (host:port; the gRPC or the HTTP port).
    #[arg(long, default_value = "127.0.0.1:4317")]
    target: String,
    /// Transport and encoding.
    #[arg(long, value_enum, default_value = "grpc")]
    protocol: otel_anomaly::loadgen::Protocol,
    /// Signal to send.
    #[arg(long, value_enum, default_value = "traces")]
    signal: otel_anomaly::loadgen::SignalKind,
    /// Records (spans or points) per second; omit to send flat out.
    #[arg(long)]
    rate: Option<f64>,
    /// Stop after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop after this many requests, if sooner.
    #[arg(long)]
    requests: Option<u64>,
    /// Requests in flight at once (one connection each).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Records per request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Different pre-encoded requests to rotate through (one repeated body would compress unrealistically well).
    #[arg(long, default_value_t = 16)]
    payloads: usize,
    /// Services the records are spread over (1 to 8).
    #[arg(long, default_value_t = 8)]
    services: usize,
    /// Seed of the payload generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Options of `bench-sink`.
#[derive(Debug, Args)]
struct BenchSinkArgs {
    /// HTTP listen address (Elasticsearch `_bulk`, OTLP/HTTP, `/_sink/stats`).
    #[arg(long, default_value = "127.0.0.1:9200")]
    listen: SocketAddr,
    /// Optional OTLP/gRPC listen address.
    #[arg(long)]
    grpc_listen: Option<SocketAddr>,
    /// Write the bound addresses as JSON to this file once listening.
    #[arg(long)]
    addr_file: Option<PathBuf>,
}

/// Flags that override the configuration (highest precedence).
#[derive(Debug, Args)]
struct CommonFlags {
    /// Environment name (the data stream namespace).
    #[arg(long)]
    environment: Option<String>,
    /// Directory for NDJSON output, dead letters and state.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// OTLP/gRPC listen address.
    #[arg(long)]
    grpc_listen: Option<SocketAddr>,
    /// OTLP/HTTP listen address.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Metrics and health listen address.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Elasticsearch URL (credentials only from files or the environment, never flags).
    #[arg(long)]
    es_url: Option<String>,
}

impl CommonFlags {
    fn overrides(&self) -> FlagOverrides {
        let mut f = FlagOverrides::default();
        f.set("environment", self.environment.as_ref());
        f.set(
            "data_dir",
            self.data_dir.as_ref().map(|p| p.display().to_string()),
        );
        f.set("receiver.grpc.listen", self.grpc_listen);
        f.set("receiver.http.listen", self.http_listen);
        f.set("admin.listen", self.admin_listen);
        f.set(
            "export.elasticsearch.urls",
            self.es_url.as_ref().map(|u| format!("[{u:?}]")),
        );
        f
    }
}

/// The one place the process environment is read.
fn env_vars() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with(config::ENV_PREFIX))
        .collect()
}

fn rust_log() -> Option<String> {
    std::env::var("RUST_LOG").ok()
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn run_sidecar(cfg: Config) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let running = otel_anomaly::sidecar::start(cfg, token.clone()).await?;
    wait_for_signal().await;
    token.cancel();
    running.done.await.context("shutdown task failed")?;
    Ok(())
}

async fn run_aggregator(
    cfg: otel_anomaly::aggregator::config::AggregatorConfig,
) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let running = otel_anomaly::aggregator::start(cfg, token.clone()).await?;
    println!("push api   {}", running.grpc_addr);
    println!("dashboard  http://{}/", running.http_addr);
    wait_for_signal().await;
    token.cancel();
    running.done.await.context("shutdown task failed")?;
    Ok(())
}

async fn run_demo(
    mut cfg: Config,
    duration: Duration,
    fault_after: Duration,
    report_every: Duration,
    flags: &CommonFlags,
) -> anyhow::Result<()> {
    // The demo binds loopback on free ports unless told otherwise.
    let s = &mut cfg.settings;
    let loopback =
        |a: Option<SocketAddr>| a.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    s.receiver.grpc.listen = loopback(flags.grpc_listen);
    s.receiver.http.listen = loopback(flags.http_listen);
    s.admin.listen = loopback(flags.admin_listen);
    if flags.environment.is_none() && s.environment == "default" {
        s.environment = "demo".into();
    }
    // A demo should find its first anomalies within minutes, not hours.
    s.detect.spans.half_life = s.detect.spans.half_life.min(Duration::from_secs(300));
    let environment = s.environment.clone();
    let es = s.export.elasticsearch.as_ref().map(|e| e.urls.join(","));
    let out_dir = cfg.file_dir();
    let token = CancellationToken::new();
    // The aggregator and a second environment's sidecar (issue 5).
    let second_env = if environment == "staging" {
        "dev"
    } else {
        "staging"
    }
    .to_string();
    let agg = otel_anomaly::aggregator::demo::start_demo(
        &cfg.settings.data_dir.join("aggregator"),
        &[environment.clone(), second_env.clone()],
        loopback(None),
        token.clone(),
    )
    .await?;
    let mut cfg2 = cfg.clone();
    for (c, env) in [(&mut cfg, &environment), (&mut cfg2, &second_env)] {
        otel_anomaly::push::config::enable(c, agg.grpc_url(), agg.tokens[env.as_str()].clone())?;
    }
    cfg2.settings.environment = second_env.clone();
    // Its own state, output and dead letters: a detector snapshot belongs to one environment.
    cfg2.settings.data_dir = cfg.settings.data_dir.join(&second_env);
    cfg2.settings.detect.snapshot.path = None;
    cfg2.settings.export.dead_letter_path = None;
    if cfg2.settings.export.file.dir.is_some() {
        cfg2.settings.export.file.dir = Some(cfg2.settings.data_dir.join("ndjson"));
    }
    let s2 = &mut cfg2.settings;
    (
        s2.receiver.grpc.listen,
        s2.receiver.http.listen,
        s2.admin.listen,
    ) = (loopback(None), loopback(None), loopback(None));
    let running2 = otel_anomaly::sidecar::start(cfg2, token.clone()).await?;
    let running = otel_anomaly::sidecar::start(cfg, token.clone()).await?;
    let grpc = running
        .grpc_addr
        .context("the demo needs the gRPC receiver")?;
    println!("otel-anomaly demo (environments {environment:?} and {second_env:?})");
    println!("  dashboard  {}", agg.dashboard_url());
    println!("  OTLP/gRPC  {grpc}");
    if let Some(h) = running.http_addr {
        println!("  OTLP/HTTP  http://{h}/v1/traces");
    }
    println!("  metrics    http://{}/metrics", running.admin_addr);
    match es {
        Some(urls) => println!("  output     Elasticsearch {urls}"),
        None => println!("  output     NDJSON files in {}", out_dir.display()),
    }
    println!(
        "Synthetic services send spans now; {} / {} gets slow after {}s. Ctrl-C to stop.\n",
        otel_anomaly::demo::FAULT_SERVICE,
        otel_anomaly::demo::FAULT_SPAN,
        fault_after.as_secs()
    );
    let traffic_stop = CancellationToken::new();
    let traffic = tokio::spawn(otel_anomaly::demo::run_traffic(
        grpc,
        fault_after,
        environment,
        traffic_stop.clone(),
    ));
    // The second environment's fault comes 30 s later.
    let traffic2 = tokio::spawn(otel_anomaly::demo::run_traffic(
        running2
            .grpc_addr
            .context("the demo needs the gRPC receiver")?,
        fault_after + Duration::from_secs(30),
        second_env,
        traffic_stop.clone(),
    ));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(report_every);
    ticker.tick().await;
    let signal = wait_for_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                otel_anomaly::demo::print_top(&running.feed, Duration::from_secs(30), started.elapsed());
                if started.elapsed() >= duration {
                    break;
                }
            }
            _ = &mut signal => break,
        }
    }
    traffic_stop.cancel();
    match traffic.await {
        Ok(Err(e)) => eprintln!("demo traffic failed: {e}"),
        Err(e) => eprintln!("demo traffic task failed: {e}"),
        Ok(Ok(())) => {}
    }
    match traffic2.await {
        Ok(Err(e)) => eprintln!("demo traffic failed: {e}"),
        Err(e) => eprintln!("demo traffic task failed: {e}"),
        Ok(Ok(())) => {}
    }
    token.cancel();
    running.done.await.context("shutdown task failed")?;
    running2.done.await.context("shutdown task failed")?;
    agg.running.done.await.context("shutdown task failed")?;
    println!("demo finished; documents are in {}", out_dir.display());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = env_vars();
    let result = match &cli.command {
        Command::CheckConfig { file } => {
            match config::resolve(Some(file), &env, &FlagOverrides::default()) {
                Ok(cfg) => {
                    println!("{}: ok", cfg.source);
                    println!("{:#?}", cfg.settings);
                    return ExitCode::SUCCESS;
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        Command::Sidecar {
            config,
            model,
            flags,
        } => {
            let mut overrides = flags.overrides();
            overrides.set("detect.model", model.as_ref().map(|p| p.display()));
            let cfg = match config::resolve(config.as_deref(), &env, &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            otel_anomaly::telemetry::init_logs(&cfg.settings.log, rust_log().as_deref());
            runtime().and_then(|rt| rt.block_on(run_sidecar(cfg)))
        }
        Command::Aggregator { config, check } => {
            let cfg = match otel_anomaly::aggregator::config::load(config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            if *check {
                println!("{}: ok", cfg.source);
                println!("{:#?}", cfg.settings);
                return ExitCode::SUCCESS;
            }
            otel_anomaly::telemetry::init_logs(&cfg.settings.log, rust_log().as_deref());
            runtime().and_then(|rt| rt.block_on(run_aggregator(cfg)))
        }
        Command::Demo {
            duration,
            fault_after,
            report_every,
            flags,
        } => {
            let cfg = match config::resolve(None, &env, &flags.overrides()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut log = cfg.settings.log.clone();
            if rust_log().is_none() {
                // Keep the demo's screen for the anomalies.
                log.level = "warn".into();
            }
            otel_anomaly::telemetry::init_logs(&log, rust_log().as_deref());
            runtime().and_then(|rt| {
                rt.block_on(run_demo(cfg, *duration, *fault_after, *report_every, flags))
            })
        }
        Command::Replay {
            what: ReplayCommand::Nab(args),
        } => run_replay_nab(args),
        Command::Replay {
            what: ReplayCommand::Otlp { file, config },
        } => match config::resolve(config.as_deref(), &env, &FlagOverrides::default()) {
            Ok(cfg) => otel_anomaly::replay_otlp::replay(file, &cfg.settings)
                .map(|r| print!("{}", otel_anomaly::replay_otlp::render(&r)))
                .map_err(anyhow::Error::from),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        Command::Loadgen(args) => {
            return match runtime().and_then(|rt| rt.block_on(run_loadgen(args))) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::BenchSink(args) => runtime().and_then(|rt| rt.block_on(run_bench_sink(args))),
        Command::Train(args) => return train_cli::train(args, &env),
        Command::Backfill(args) => return train_cli::backfill(args, &env),
        Command::Faultbench {
            keys,
            duration,
            warmup,
            rate,
            seed,
        } => {
            run_faultbench(*keys, *duration, *warmup, *rate, *seed);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_loadgen(a: &LoadgenArgs) -> anyhow::Result<ExitCode> {
    let opts = otel_anomaly::loadgen::Options {
        target: a.target.clone(),
        protocol: a.protocol,
        signal: a.signal,
        rate: a.rate,
        duration: a.duration,
        max_requests: a.requests,
        concurrency: a.concurrency,
        records_per_request: a.batch,
        payloads: a.payloads,
        services: a.services,
        seed: a.seed,
        timeout: a.timeout,
    };
    let report = otel_anomaly::loadgen::run(opts).await?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.human());
    }
    // Exit 1 when nothing got through, so scripts notice a dead target.
    Ok(if report.requests_ok == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn run_bench_sink(a: &BenchSinkArgs) -> anyhow::Result<()> {
    let http = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let grpc = match a.grpc_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?,
        ),
        None => None,
    };
    let http_addr = http.local_addr()?;
    let grpc_addr = grpc.as_ref().map(|g| g.local_addr()).transpose()?;
    let addrs = serde_json::json!({"http": http_addr.to_string(), "grpc": grpc_addr.map(|a| a.to_string())});
    if let Some(f) = &a.addr_file {
        std::fs::write(f, addrs.to_string())
            .with_context(|| format!("cannot write {}", f.display()))?;
    }
    eprintln!("bench-sink listening: {addrs}");
    let stats = std::sync::Arc::new(otel_anomaly::bench_sink::SinkStats::default());
    let token = CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        stop.cancel();
    });
    otel_anomaly::bench_sink::serve(http, grpc, stats.clone(), token).await?;
    println!("{}", serde_json::to_string(&stats.view())?);
    Ok(())
}

fn run_faultbench(keys: usize, duration: Duration, warmup: Duration, rate: f64, seed: u64) {
    use std::io::{IsTerminal, Write};
    let p = otel_anomaly::faultbench::BenchParams {
        keys,
        duration_s: duration.as_secs(),
        warmup_s: warmup.as_secs(),
        mean_rate: rate,
        seed,
        ..Default::default()
    };
    eprintln!(
        "trace-fault benchmark: {keys} keys, {} warm-up + {} scored, ~{rate} spans/s per key, seed {seed}",
        humantime::format_duration(warmup),
        humantime::format_duration(duration)
    );
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let report = otel_anomaly::faultbench::run(&p, |done| {
        if tty {
            let el = started.elapsed().as_secs_f64();
            let eta = if done > 0.0 { el / done - el } else { 0.0 };
            eprint!(
                "\r  {:5.1}%  elapsed {el:.0}s  eta {eta:.0}s ",
                done * 100.0
            );
            let _ = std::io::stderr().flush();
        }
    });
    if tty {
        eprintln!();
    }
    print!("{}", report.render());
    eprintln!("done in {:.1}s", started.elapsed().as_secs_f64());
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run_replay_nab(args: &NabArgs) -> anyhow::Result<()> {
    use otel_anomaly::{nab, replay};
    replay::check_name(&args.name)?;
    let scoring = args.score || args.results.is_some();
    if scoring && args.labels.is_none() {
        anyhow::bail!("scoring needs --labels WINDOWS.json (NAB's combined_windows.json)");
    }
    if !scoring && args.out.is_none() {
        anyhow::bail!("nothing to do: give --out RESULTS, or --labels WINDOWS.json --score");
    }
    let profiles = || -> anyhow::Result<Vec<nab::Profile>> {
        let path = args
            .profiles
            .clone()
            .unwrap_or_else(|| args.data.join("../config/profiles.json"));
        nab::load_profiles(&path).with_context(|| format!("cost profiles {}", path.display()))
    };
    let report = if let Some(results) = &args.results {
        let labels = args.labels.as_deref().context("--labels")?;
        let windows = nab::load_windows(labels, &args.data)?;
        nab::score_corpus(results, &args.name, &args.data, &windows, &profiles()?)?
    } else {
        let keys = replay::discover(&args.data)?;
        let bar = indicatif::ProgressBar::new(keys.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                .context("progress style")?,
        );
        let params = otel_anomaly::detect::metric::MetricParams::default();
        let replayed = replay::replay_corpus(&args.data, params, |key| {
            bar.set_message(key.to_string());
            bar.inc(1);
        })?;
        bar.finish_and_clear();
        if let Some(out) = &args.out {
            for r in &replayed {
                replay::write_results(out, &args.name, &r.series, &r.scores)?;
            }
            println!(
                "wrote {} results files to {}",
                replayed.len(),
                out.join(&args.name).display()
            );
        }
        let Some(labels) = args.labels.as_deref().filter(|_| args.score) else {
            return Ok(());
        };
        replay::score_replayed(&args.name, &replayed, labels, &args.data, &profiles()?)?
    };
    print!("{}", replay::render_report(&report));
    Ok(())
}
