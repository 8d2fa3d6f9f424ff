//! TLS on the real listeners, with certificates made in the test (rcgen):
//! a valid chain, an expired certificate, an unknown CA, a wrong host name,
//! mTLS with and without a client certificate, reload when the files
//! change (and keeping the old certificate when the new files are broken),
//! the aggregator's listeners, and TLS with a client certificate to an
//! Elasticsearch-compatible server.

mod agg;
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use otel_anomaly::tls::{TlsSettings, TlsSource};
use prost::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A CA that signs server and client certificates.
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            issuer: rcgen::Issuer::new(params, key),
            pem: cert.pem(),
        }
    }

    /// (certificate PEM, key PEM) for `names`; expired if `expired`.
    fn leaf(&self, names: &[&str], expired: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Writes a server certificate for `names` and returns its TLS settings (fast reload).
fn server_tls(dir: &Path, ca: &Ca, names: &[&str], expired: bool) -> TlsSettings {
    let (cert, key) = ca.leaf(names, expired);
    TlsSettings {
        cert_file: write(dir, "server.pem", &cert),
        key_file: write(dir, "server.key", &key),
        client_ca_file: None,
        reload_interval: Duration::from_millis(100),
    }
}

/// An HTTPS client that trusts only `ca` and sends `localhost` to `addr`.
fn https_client(ca: &str, addr: SocketAddr, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .resolve("wrong.name.test", addr)
        .timeout(Duration::from_secs(10))
        .no_proxy();
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}\n{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// The whole error chain as text, for asserting on the TLS reason.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(" / ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// What a raw TLS client learns from the server: it handshakes (with the
/// client certificate, if any), sends one request and reads to the end; the
/// error names the server's fatal alert. (Through reqwest, TLS 1.3 can hide
/// the alert: the client finishes its side of the handshake first and may
/// see only a closed connection.)
async fn server_alert(addr: SocketAddr, ca_pem: &str, identity: Option<(&str, &str)>) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match identity {
        Some((c, k)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(c.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(
            b"POST /v1/traces HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .await?;
        let mut reply = Vec::new();
        tls.read_to_end(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Err(_) => "no answer within 10 s".into(),
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(reply)) => format!(
            "no alert; the server answered {:?}",
            String::from_utf8_lossy(&reply[..reply.len().min(40)])
        ),
    }
}

async fn post_traces(
    client: &reqwest::Client,
    host: &str,
    addr: SocketAddr,
) -> reqwest::Result<u16> {
    let body = trace_request(vec![span(1, "GET /tls")]).encode_to_vec();
    let r = client
        .post(format!("https://{host}:{}/v1/traces", addr.port()))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await?;
    Ok(r.status().as_u16())
}

async fn grpc_client(
    addr: SocketAddr,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<TraceServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(c, k));
    }
    let ch = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(TraceServiceClient::new(ch))
}

fn tls_sidecar_config(dir: &Path, tls: &TlsSettings) -> otel_anomaly::config::Config {
    let mut cfg = base_config(dir);
    cfg.settings.receiver.grpc.tls = Some(tls.clone());
    cfg.settings.receiver.http.tls = Some(tls.clone());
    cfg.settings.admin.tls = Some(tls.clone());
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_certificate_serves_every_sidecar_listener_and_plain_text_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let tls = server_tls(dir.path(), &ca, &["localhost"], false);
    let sc = Sidecar::start(tls_sidecar_config(dir.path(), &tls)).await;
    let http_addr = sc.running.http_addr.unwrap();
    let client = https_client(&ca.pem, http_addr, None);
    assert_eq!(
        post_traces(&client, "localhost", http_addr).await.unwrap(),
        200
    );

    // gRPC over TLS.
    let mut g = grpc_client(sc.running.grpc_addr.unwrap(), &ca.pem, None)
        .await
        .expect("grpc over tls connects");
    g.export(trace_request(vec![span(2, "GET /tls-grpc")]))
        .await
        .expect("export over tls");

    // Admin over TLS.
    let admin = https_client(&ca.pem, sc.running.admin_addr, None);
    let r = admin
        .get(format!(
            "https://localhost:{}/healthz",
            sc.running.admin_addr.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // Plain HTTP to a TLS port gets no OTLP answer.
    let plain = sc
        .http
        .post(format!("http://{http_addr}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(trace_request(vec![span(3, "x")]).encode_to_vec())
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plain text to a tls listener must fail: {plain:?}"
    );
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_unknown_ca_and_wrong_name_are_refused_by_the_client_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let other = Ca::new("other ca");

    // Expired server certificate.
    let tls = server_tls(dir.path(), &ca, &["localhost"], true);
    let sc = Sidecar::start(tls_sidecar_config(dir.path(), &tls)).await;
    let addr = sc.running.http_addr.unwrap();
    let e = post_traces(&https_client(&ca.pem, addr, None), "localhost", addr)
        .await
        .expect_err("an expired certificate must be refused");
    let text = chain(&e);
    assert!(text.to_lowercase().contains("expired"), "{text}");
    let g = grpc_client(sc.running.grpc_addr.unwrap(), &ca.pem, None).await;
    let text = chain(&g.expect_err("grpc: expired certificate refused"));
    assert!(text.to_lowercase().contains("expired"), "{text}");
    sc.shutdown().await;

    // Valid certificate, but the client trusts another CA.
    let dir = tempfile::tempdir().unwrap();
    let tls = server_tls(dir.path(), &ca, &["localhost"], false);
    let sc = Sidecar::start(tls_sidecar_config(dir.path(), &tls)).await;
    let addr = sc.running.http_addr.unwrap();
    let e = post_traces(&https_client(&other.pem, addr, None), "localhost", addr)
        .await
        .expect_err("a certificate from an unknown CA must be refused");
    let text = chain(&e);
    assert!(text.contains("UnknownIssuer"), "{text}");

    // Right CA, wrong host name.
    let e = post_traces(&https_client(&ca.pem, addr, None), "wrong.name.test", addr)
        .await
        .expect_err("a certificate for another name must be refused");
    let text = chain(&e);
    assert!(text.contains("not valid for name"), "{text}");

    // The listener still serves a correct client afterwards.
    assert_eq!(
        post_traces(&https_client(&ca.pem, addr, None), "localhost", addr)
            .await
            .unwrap(),
        200
    );
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_from_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("server ca");
    let clients = Ca::new("client ca");
    let strangers = Ca::new("stranger ca");
    let mut tls = server_tls(dir.path(), &ca, &["localhost"], false);
    tls.client_ca_file = Some(write(dir.path(), "clients.pem", &clients.pem));
    let sc = Sidecar::start(tls_sidecar_config(dir.path(), &tls)).await;
    let addr = sc.running.http_addr.unwrap();

    // Without a client certificate: refused, and the server's alert says why.
    post_traces(&https_client(&ca.pem, addr, None), "localhost", addr)
        .await
        .expect_err("no client certificate: refused");
    let alert = server_alert(addr, &ca.pem, None).await;
    assert!(alert.contains("CertificateRequired"), "{alert}");

    // With a client certificate from another CA.
    let (c, k) = strangers.leaf(&["collector"], false);
    post_traces(
        &https_client(&ca.pem, addr, Some((&c, &k))),
        "localhost",
        addr,
    )
    .await
    .expect_err("client certificate from an unknown CA: refused");
    let alert = server_alert(addr, &ca.pem, Some((&c, &k))).await;
    assert!(
        alert.contains("UnknownCA") || alert.contains("BadCertificate"),
        "{alert}"
    );

    // With a good client certificate: HTTP, gRPC and admin.
    let (c, k) = clients.leaf(&["collector"], false);
    assert_eq!(
        post_traces(
            &https_client(&ca.pem, addr, Some((&c, &k))),
            "localhost",
            addr
        )
        .await
        .unwrap(),
        200
    );
    let mut g = grpc_client(sc.running.grpc_addr.unwrap(), &ca.pem, Some((&c, &k)))
        .await
        .expect("mtls grpc connects");
    g.export(trace_request(vec![span(5, "GET /mtls")]))
        .await
        .expect("export over mtls");
    // gRPC without a certificate fails on its first call at the latest.
    let no_cert = async {
        let mut g = grpc_client(sc.running.grpc_addr.unwrap(), &ca.pem, None).await?;
        g.export(trace_request(vec![span(6, "x")]))
            .await
            .map_err(|s| Box::new(s) as Box<dyn std::error::Error>)?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    assert!(
        no_cert.await.is_err(),
        "grpc without a client certificate must fail"
    );
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_is_reloaded_when_the_files_change_and_kept_when_they_are_broken() {
    let dir = tempfile::tempdir().unwrap();
    let first = Ca::new("first ca");
    let second = Ca::new("second ca");
    let tls = server_tls(dir.path(), &first, &["localhost"], false);
    let sc = Sidecar::start(tls_sidecar_config(dir.path(), &tls)).await;
    let addr = sc.running.http_addr.unwrap();
    let trusts_first = || https_client(&first.pem, addr, None);
    let trusts_second = || https_client(&second.pem, addr, None);
    assert_eq!(
        post_traces(&trusts_first(), "localhost", addr)
            .await
            .unwrap(),
        200
    );
    assert!(post_traces(&trusts_second(), "localhost", addr)
        .await
        .is_err());

    // Replace the files with a certificate from the second CA.
    let (cert, key) = second.leaf(&["localhost"], false);
    std::fs::write(&tls.key_file, &key).unwrap();
    std::fs::write(&tls.cert_file, &cert).unwrap();
    eventually("the new certificate is served", WAIT, || async {
        post_traces(&trusts_second(), "localhost", addr)
            .await
            .is_ok()
    })
    .await;
    assert!(post_traces(&trusts_first(), "localhost", addr)
        .await
        .is_err());

    // Broken files: the listener keeps the certificate it has.
    std::fs::write(&tls.cert_file, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        post_traces(&trusts_second(), "localhost", addr)
            .await
            .unwrap(),
        200
    );
    // A key that does not belong to the certificate: also kept.
    let (_, other_key) = first.leaf(&["localhost"], false);
    std::fs::write(&tls.cert_file, &cert).unwrap();
    std::fs::write(&tls.key_file, &other_key).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        post_traces(&trusts_second(), "localhost", addr)
            .await
            .unwrap(),
        200
    );
    sc.shutdown().await;
}

#[test]
fn reload_reports_what_is_wrong_and_keeps_the_previous_config() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let tls = server_tls(dir.path(), &ca, &["localhost"], false);
    let src = TlsSource::load("receiver.http.tls", &tls, otel_anomaly::tls::ALPN_HTTP).unwrap();
    let before = src.config();
    assert!(!src.reload().unwrap(), "unchanged files: no reload");
    std::fs::write(&tls.cert_file, "garbage").unwrap();
    let e = src.reload().unwrap_err().to_string();
    assert!(e.contains("receiver.http.tls.cert_file"), "{e}");
    assert!(Arc::ptr_eq(&before, &src.config()), "old config kept");
    let (_, key) = ca.leaf(&["localhost"], false);
    let (cert, _) = ca.leaf(&["localhost"], false);
    std::fs::write(&tls.cert_file, &cert).unwrap();
    std::fs::write(&tls.key_file, &key).unwrap();
    let e = src.reload().unwrap_err().to_string();
    assert!(e.contains("do not fit together"), "{e}");
    assert!(Arc::ptr_eq(&before, &src.config()), "old config kept");
    // Start-up with broken files fails with the key and path.
    let e = TlsSource::load("admin.tls", &tls, otel_anomaly::tls::ALPN_HTTP)
        .unwrap_err()
        .to_string();
    assert!(e.contains("admin.tls"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_serves_its_api_and_push_over_tls_with_mtls_on_push() {
    use otel_anomaly::push::proto::push_client::PushClient;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("agg ca");
    let sidecars = Ca::new("sidecar ca");
    let tls = server_tls(d, &ca, &["localhost"], false);
    write(d, "sidecars.pem", &sidecars.pem);
    let path = agg::write_config(d, "");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replace(
            "grpc: {listen: '127.0.0.1:0'}",
            &format!(
                "grpc: {{listen: '127.0.0.1:0', tls: {{cert_file: {0}, key_file: {1}, client_ca_file: {2}/sidecars.pem}}}}",
                tls.cert_file.display(),
                tls.key_file.display(),
                d.display()
            ),
        )
        .replace(
            "http: {listen: '127.0.0.1:0',",
            &format!(
                "http: {{tls: {{cert_file: {0}, key_file: {1}}}, listen: '127.0.0.1:0',",
                tls.cert_file.display(),
                tls.key_file.display()
            ),
        );
    std::fs::write(&path, text).unwrap();
    let a = agg::Agg::start(&path).await;
    let http_addr = a.running.http_addr;
    let r = https_client(&ca.pem, http_addr, None)
        .get(format!("https://localhost:{}/healthz", http_addr.port()))
        .send()
        .await
        .expect("aggregator https");
    assert_eq!(r.status().as_u16(), 200);

    let push_channel = |identity: Option<(String, String)>| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca.pem))
            .domain_name("localhost");
        if let Some((c, k)) = identity {
            tls = tls.identity(Identity::from_pem(c, k));
        }
        Channel::from_shared(format!("https://{}", a.running.grpc_addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
    };
    // With a sidecar certificate and token: accepted.
    let ch = push_channel(Some(sidecars.leaf(&["sidecar-dev"], false)))
        .connect()
        .await
        .expect("mtls push connects");
    let mut c = PushClient::new(ch);
    let r = agg::push(
        &mut c,
        Some(agg::DEV_TOKEN),
        vec![agg::event("tls-e1", "dev", "cart", "k", 80.0)],
    )
    .await
    .expect("push over mtls");
    assert_eq!(r.accepted, 1);
    // Without a client certificate: the handshake or the first call fails.
    let no_cert = async {
        let ch = push_channel(None).connect().await?;
        let mut c = PushClient::new(ch);
        agg::push(
            &mut c,
            Some(agg::DEV_TOKEN),
            vec![agg::event("tls-e2", "dev", "cart", "k", 80.0)],
        )
        .await
        .map_err(|s| Box::new(s) as Box<dyn std::error::Error>)?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    assert!(
        no_cert.await.is_err(),
        "push without a client certificate must fail"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_over_tls_with_a_private_ca_and_a_client_certificate() {
    use axum::extract::Request;
    use axum::middleware::Next;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let ca = Ca::new("es ca");
    let clients = Ca::new("es clients");
    // The ES-compatible sink behind an mTLS listener, recording the
    // Authorization header it is sent.
    let es_dir = d.join("es");
    std::fs::create_dir_all(&es_dir).unwrap();
    let mut es_tls = server_tls(&es_dir, &ca, &["localhost"], false);
    es_tls.client_ca_file = Some(write(&es_dir, "clients.pem", &clients.pem));
    let stats = Arc::new(otel_anomaly::bench_sink::SinkStats::default());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen2 = seen.clone();
    let router = otel_anomaly::bench_sink::router(stats.clone()).layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let seen = seen2.clone();
            async move {
                if let Some(v) = req.headers().get("authorization") {
                    seen.lock()
                        .unwrap()
                        .push(v.to_str().unwrap_or("").to_string());
                }
                next.run(req).await
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let es_addr = listener.local_addr().unwrap();
    let src = TlsSource::load("es", &es_tls, otel_anomaly::tls::ALPN_HTTP).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let es_task = tokio::spawn(otel_anomaly::tls::serve_http(
        listener,
        Some(src),
        router,
        stop.clone().cancelled_owned(),
    ));

    let (c, k) = clients.leaf(&["sidecar"], false);
    let mut cfg = base_config(&d);
    let es = otel_anomaly::config::ElasticsearchSettings {
        urls: vec![format!("https://localhost:{}", es_addr.port())],
        ca_file: Some(write(&d, "es-ca.pem", &ca.pem)),
        client_cert_file: Some(write(&d, "client.pem", &c)),
        client_key_file: Some(write(&d, "client.key", &k)),
        api_key_file: Some(write(&d, "es.key", "ZXMta2V5LWZvci10bHM=")),
        mode: otel_anomaly::config::IndexMode::Index,
        ..Default::default()
    };
    cfg.settings.export.elasticsearch = Some(es);
    // Re-validate so the API key file is read as the sidecar does.
    let cfg = revalidate(cfg);
    let sc = Sidecar::start(cfg).await;
    let resp = sc
        .post_traces(&trace_request(vec![span(7, "GET /es-tls")]))
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    eventually("the span reaches the sink over mTLS", WAIT, || async {
        stats.view().bulk_docs >= 1
    })
    .await;
    let headers = seen.lock().unwrap().clone();
    assert!(
        headers.iter().all(|h| h == "ApiKey ZXMta2V5LWZvci10bHM="),
        "API key sent beside the client certificate: {headers:?}"
    );
    assert!(!headers.is_empty());
    sc.shutdown().await;
    stop.cancel();
    let _ = es_task.await;
}

/// Runs a config built in code through the same validation as a file.
fn revalidate(cfg: otel_anomaly::config::Config) -> otel_anomaly::config::Config {
    let yaml = serde_yaml::to_string(&serde_json::json!({
        "environment": cfg.settings.environment,
        "data_dir": cfg.settings.data_dir,
        "receiver": {
            "grpc": {"listen": cfg.settings.receiver.grpc.listen.to_string()},
            "http": {"listen": cfg.settings.receiver.http.listen.to_string()},
        },
        "admin": {"listen": cfg.settings.admin.listen.to_string()},
        "pipeline": {"workers": 1},
        "shutdown_timeout": "5s",
        "export": {"elasticsearch": cfg.settings.export.elasticsearch.as_ref().map(|es| serde_json::json!({
            "urls": es.urls,
            "ca_file": es.ca_file,
            "client_cert_file": es.client_cert_file,
            "client_key_file": es.client_key_file,
            "api_key_file": es.api_key_file,
            "mode": "index",
            "bulk": {"flush_interval": "50ms"},
        }))},
    }))
    .unwrap();
    let path = cfg.settings.data_dir.join("sidecar.yaml");
    std::fs::write(&path, yaml).unwrap();
    otel_anomaly::config::resolve(
        Some(&path),
        &Default::default(),
        &otel_anomaly::config::FlagOverrides::default(),
    )
    .expect("config with TLS to Elasticsearch validates")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_stalled_handshakes_do_not_block_other_clients() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let tls = server_tls(dir.path(), &ca, &["localhost"], false);
    let sc = Sidecar::start(tls_sidecar_config(dir.path(), &tls)).await;
    let addr = sc.running.http_addr.unwrap();
    // Clients that connect and never finish a handshake (bounded: 40).
    let mut stalled = Vec::new();
    for _ in 0..40 {
        stalled.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // Bytes that are not TLS at all.
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0][..],
        &[0u8; 512][..],
    ] {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = c.write_all(junk).await;
    }
    // A real client is still served while those are pending.
    let status = tokio::time::timeout(
        Duration::from_secs(5),
        post_traces(&https_client(&ca.pem, addr, None), "localhost", addr),
    )
    .await
    .expect("served while other handshakes stall")
    .unwrap();
    assert_eq!(status, 200);
    drop(stalled);
    sc.shutdown().await;
}
