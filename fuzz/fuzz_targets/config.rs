//! Configuration parsing: arbitrary text as the sidecar's YAML file (with an
//! environment override), and as the aggregator's; an error is fine, a panic
//! is not. A file is used because that is the path operators take.
#![no_main]
use std::collections::BTreeMap;
use std::sync::OnceLock;

use otel_anomaly::config::{resolve, FlagOverrides};

fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("otel-anomaly-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line (if it has '=') is an OTEL_ANOMALY_* override.
    let (env_line, yaml) = match text.split_once('\n') {
        Some((first, rest)) if first.contains('=') => (Some(first), rest),
        _ => (None, text),
    };
    let mut env = BTreeMap::new();
    if let Some((k, v)) = env_line.and_then(|l| l.split_once('=')) {
        env.insert(format!("OTEL_ANOMALY_{}", k.to_ascii_uppercase()), v.to_string());
    }
    let path = dir().join("sidecar.yaml");
    std::fs::write(&path, yaml).unwrap();
    let _ = resolve(Some(&path), &env, &FlagOverrides::default());
    let path = dir().join("aggregator.yaml");
    std::fs::write(&path, yaml).unwrap();
    let _ = otel_anomaly::aggregator::config::load(&path);
});
