//! TLS for every listener (OTLP gRPC and HTTP, admin, aggregator gRPC and
//! HTTP), with rustls: one config shape (`tls: {cert_file, key_file,
//! client_ca_file, reload_interval}`), optional mTLS, and certificates
//! reloaded when their files change.
//!
//! [`TlsListener`] wraps a bound `TcpListener`: handshakes run in their own
//! tasks (a slow client cannot hold up others), and finished connections
//! come out as an axum [`Listener`](axum::serve::Listener) or as a stream for
//! tonic's `serve_with_incoming_shutdown`. Each connection takes the current
//! [`ServerConfig`]; a reload task re-reads the files every
//! `reload_interval` and swaps the config in when they changed and parse.
//! Broken new files are logged and the previous certificate keeps serving.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// ALPN for HTTP listeners (axum serves both).
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN for gRPC listeners (HTTP/2 only).
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];

/// A handshake that has not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once per listener; past it, accepting waits.
const MAX_HANDSHAKES: usize = 256;
/// Finished connections waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 64;

/// The `tls:` section of a listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// Certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA bundle (PEM): when set, clients must present a certificate it signed (mTLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are checked for changes (0s: never).
    #[serde(default = "default_reload", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_reload() -> Duration {
    Duration::from_secs(30)
}

impl TlsSettings {
    /// Settings with the default reload interval.
    pub fn new(cert_file: PathBuf, key_file: PathBuf) -> Self {
        Self {
            cert_file,
            key_file,
            client_ca_file: None,
            reload_interval: default_reload(),
        }
    }
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {key} {path}: {source}")]
    Read {
        key: String,
        path: String,
        source: std::io::Error,
    },
    #[error("{key} {path}: {reason}")]
    Pem {
        key: String,
        path: String,
        reason: String,
    },
    #[error("{key}: {reason}")]
    Config { key: String, reason: String },
}

/// The bytes of the files a config was built from, to notice changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileBytes {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
}

fn read(key: &str, field: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key: format!("{key}.{field}"),
        path: path.display().to_string(),
        source,
    })
}

fn read_files(key: &str, s: &TlsSettings) -> Result<FileBytes, TlsError> {
    Ok(FileBytes {
        cert: read(key, "cert_file", &s.cert_file)?,
        key: read(key, "key_file", &s.key_file)?,
        ca: match &s.client_ca_file {
            Some(p) => Some(read(key, "client_ca_file", p)?),
            None => None,
        },
    })
}

fn certs(
    key: &str,
    field: &str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::Pem {
        key: format!("{key}.{field}"),
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(
    key: &str,
    s: &TlsSettings,
    files: &FileBytes,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let chain = certs(key, "cert_file", &s.cert_file, &files.cert)?;
    let private = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| TlsError::Pem {
        key: format!("{key}.key_file"),
        path: s.key_file.display().to_string(),
        reason: format!("no usable private key: {e}"),
    })?;
    let config_err = |reason: String| TlsError::Config {
        key: key.to_string(),
        reason,
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(e.to_string()))?;
    let builder = match (&s.client_ca_file, &files.ca) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for c in certs(key, "client_ca_file", path, pem)? {
                roots.add(c).map_err(|e| TlsError::Pem {
                    key: format!("{key}.client_ca_file"),
                    path: path.display().to_string(),
                    reason: format!("unusable CA certificate: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| config_err(format!("client_ca_file: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, private)
        .map_err(|e| config_err(format!("certificate and key do not fit together: {e}")))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A listener's TLS configuration, swapped in place when its files change.
#[derive(Debug)]
pub struct TlsSource {
    key: String,
    settings: TlsSettings,
    alpn: Vec<&'static [u8]>,
    current: RwLock<(Arc<ServerConfig>, FileBytes)>,
}

impl TlsSource {
    /// Reads and checks the files; `key` names the config section in messages
    /// (e.g. `receiver.grpc.tls`).
    pub fn load(
        key: &str,
        settings: &TlsSettings,
        alpn: &[&'static [u8]],
    ) -> Result<Arc<Self>, TlsError> {
        let files = read_files(key, settings)?;
        let config = build(key, settings, &files, alpn)?;
        Ok(Arc::new(Self {
            key: key.to_string(),
            settings: settings.clone(),
            alpn: alpn.to_vec(),
            current: RwLock::new((Arc::new(config), files)),
        }))
    }

    /// The config new connections get.
    pub fn config(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(g) => g.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        }
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.settings.client_ca_file.is_some()
    }

    /// Re-reads the files; swaps the config in if they changed and are valid.
    /// `Ok(true)`: reloaded; `Ok(false)`: unchanged; `Err`: changed but
    /// unusable, the previous config stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let files = read_files(&self.key, &self.settings)?;
        let unchanged = match self.current.read() {
            Ok(g) => g.1 == files,
            Err(p) => p.into_inner().1 == files,
        };
        if unchanged {
            return Ok(false);
        }
        let config = build(&self.key, &self.settings, &files, &self.alpn)?;
        let mut g = match self.current.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = (Arc::new(config), files);
        Ok(true)
    }

    /// Checks the files every `reload_interval` while `self` is alive.
    fn spawn_reload(self: &Arc<Self>) {
        let every = self.settings.reload_interval;
        if every.is_zero() {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            // A failed reload is reported once per distinct error, not every tick.
            let mut last_error: Option<String> = None;
            loop {
                tokio::time::sleep(every).await;
                let Some(src) = weak.upgrade() else { break };
                let s = src.clone();
                let result = match tokio::task::spawn_blocking(move || s.reload()).await {
                    Ok(r) => r,
                    Err(e) => Err(TlsError::Config {
                        key: src.key.clone(),
                        reason: format!("reload task failed: {e}"),
                    }),
                };
                match result {
                    Ok(true) => {
                        last_error = None;
                        tracing::info!(listener = %src.key, cert = %src.settings.cert_file.display(), "tls certificate reloaded");
                    }
                    Ok(false) => last_error = None,
                    Err(e) => {
                        let text = e.to_string();
                        if last_error.as_deref() != Some(text.as_str()) {
                            tracing::warn!(listener = %src.key, error = %text, "tls reload failed; still serving the previous certificate");
                            last_error = Some(text);
                        }
                    }
                }
            }
        });
    }
}

/// A TCP listener whose connections come out after a finished TLS handshake.
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Stops accepting (and closes the socket) with the server that owned it.
        self.acceptor.abort();
    }
}

impl TlsListener {
    /// Wraps a bound listener; starts the reload task for `source`. Failed
    /// handshakes are logged at debug level (a scanner must not flood the log)
    /// and counted by the client's own error.
    pub fn new(listener: TcpListener, source: Arc<TlsSource>) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        source.spawn_reload();
        let (tx, accepted) = mpsc::channel(ACCEPTED_BACKLOG);
        let acceptor = tokio::spawn(accept_loop(listener, source, tx));
        Ok(Self {
            accepted,
            local_addr,
            acceptor,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections as a stream, for tonic's `serve_with_incoming*`.
    pub fn into_incoming(
        self,
    ) -> impl futures_util::Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send + 'static
    {
        futures_util::stream::unfold(self, |mut l| async move {
            let (io, _) = l.accepted.recv().await?;
            Some((Ok(io), l))
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    source: Arc<TlsSource>,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait, then go on.
                tracing::warn!(listener = %source.key, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(source.config());
        let (tx, key) = (tx.clone(), source.key.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(listener = %key, peer = %peer, error = %e, "tls handshake failed")
                }
                Err(_) => {
                    tracing::debug!(listener = %key, peer = %peer, "tls handshake timed out")
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(c) => c,
            // The accept loop ended (it only does when this listener is
            // dropped, or the runtime stops): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// Checks a `tls:` section at config time: files exist (content is checked at start).
pub fn check_files(key: &str, s: &TlsSettings) -> Result<(), String> {
    for (field, p) in [
        ("cert_file", Some(&s.cert_file)),
        ("key_file", Some(&s.key_file)),
        ("client_ca_file", s.client_ca_file.as_ref()),
    ] {
        if let Some(p) = p {
            if !p.is_file() {
                return Err(format!("{key}.{field}: {} is not a file", p.display()));
            }
        }
    }
    Ok(())
}

/// Serves an axum router on `listener`, over TLS when `tls` is set, until `stop`.
pub async fn serve_http(
    listener: TcpListener,
    tls: Option<Arc<TlsSource>>,
    router: axum::Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(stop)
                .await
        }
        Some(src) => {
            let l = TlsListener::new(listener, src)?;
            axum::serve(l, router).with_graceful_shutdown(stop).await
        }
    }
}
