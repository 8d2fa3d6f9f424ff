//! The aggregator's push API: arbitrary bytes as a PushEventsRequest (and a
//! HeartbeatRequest), checked against a sidecar's scope and limits, and
//! stored when accepted. The store must accept or refuse, never panic, and a
//! repeated batch must count only duplicates.
#![no_main]
use std::sync::OnceLock;
use std::time::Duration;

use otel_anomaly::aggregator::config::{load, TokenEntry};
use otel_anomaly::aggregator::grpc::check_batch;
use otel_anomaly::aggregator::store::{Rules, Store};
use otel_anomaly::push::proto::{HeartbeatRequest, PushEventsRequest};
use prost::Message;

struct Fixture {
    dev: TokenEntry,
    store: Store,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("otel-anomaly-fuzz-push-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("dev.token"), "fuzz-dev-token").unwrap();
        let cfg_path = d.join("aggregator.yaml");
        std::fs::write(
            &cfg_path,
            format!(
                "data_dir: {0}\nhttp: {{anonymous: true}}\nsidecars: [{{name: dev, environment: dev, token_file: {0}/dev.token}}]\n",
                d.display()
            ),
        )
        .unwrap();
        let cfg = load(&cfg_path).expect("fixture config");
        let rules = Rules {
            resolve_after: Duration::from_secs(120),
            max_duration: Duration::from_secs(3600),
            retention: Duration::from_secs(86_400),
        };
        let store = Store::open(&d.join("store.sqlite"), rules).expect("store");
        Fixture {
            dev: cfg.tokens[0].clone(),
            store,
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = HeartbeatRequest::decode(data);
    let Ok(req) = PushEventsRequest::decode(data) else {
        return;
    };
    let f = fixture();
    if check_batch(&f.dev, &req.events, 50).is_err() || req.events.is_empty() {
        return;
    }
    let now = 1_800_000_000_000_000_000i64;
    let first = f.store.ingest("dev", &req.events, now).expect("store accepts a checked batch");
    let again = f.store.ingest("dev", &req.events, now).expect("store accepts a checked batch");
    assert_eq!(again.accepted, 0, "a repeated batch stored new events");
    assert!(first.accepted as usize + first.duplicates as usize <= req.events.len());
});
