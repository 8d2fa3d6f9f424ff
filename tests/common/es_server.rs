//! Real Elasticsearch-compatible servers for integration tests, started on
//! a free loopback port and killed when dropped: `noida-db` (Elasticsearch
//! API with point in time) and `osmem-server` (OpenSearch API: scroll, no
//! Elasticsearch point in time). Both are installed from PyPI by
//! `scripts/test.sh` (tests/e2e/requirements.txt).

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server.
pub struct EsServer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for EsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True when `GET /` answers 200 (plain HTTP/1.0 over a socket: no client needed).
fn answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

fn wait_ready(port: u16, child: &mut Child, what: &str) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited during start-up ({status})");
        }
        if answers(port) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not answer on port {port} within 60 s");
}

/// The noida-db server binary inside its Python package. The `noida-db`
/// command on PATH is a Python wrapper that runs the binary as its child:
/// killing the wrapper (as `Drop` does) would leave the server running.
fn noida_binary() -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            // chmod as the wrapper does: a wheel may install it without the execute bit.
            "import os; from importlib.resources import files; \
             p = str(files('noida_db').joinpath('noida-db')); os.chmod(p, 0o755); print(p)",
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "noida-db is not installed (pip install -r tests/e2e/requirements.txt; scripts/test.sh does)"
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl EsServer {
    /// Starts `noida-db` with only its Elasticsearch service.
    pub fn noida() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = crate::common::free_port();
        let mut child = Command::new(noida_binary())
            .args(["start", "--only", "elasticsearch", "--elasticsearch-port"])
            .arg(port.to_string())
            .args(["--host", "127.0.0.1", "--data-dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("noida-db starts");
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(port, &mut child, "noida-db");
        Self {
            child,
            url,
            _dir: dir,
        }
    }

    /// Starts `osmem-server`.
    pub fn osmem() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("python3")
            .args([
                "-c",
                "import osmem_server; print(osmem_server.resolve_binary())",
            ])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "osmem-server is not installed (pip install -r tests/e2e/requirements.txt; scripts/test.sh does)"
        );
        let bin = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let port = crate::common::free_port();
        let mut child = Command::new(bin)
            .arg("--addr")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--no-stdin-watch", "--no-ja"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("osmem-server starts");
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(port, &mut child, "osmem-server");
        Self {
            child,
            url,
            _dir: dir,
        }
    }

    /// Sends documents with the bulk API (`create` into `index`), then refreshes.
    pub async fn bulk(&self, http: &reqwest::Client, docs: &[(String, bytes::Bytes)]) {
        for chunk in docs.chunks(2_000) {
            let mut body = Vec::new();
            for (index, source) in chunk {
                body.extend_from_slice(
                    serde_json::json!({"create": {"_index": index}})
                        .to_string()
                        .as_bytes(),
                );
                body.push(b'\n');
                body.extend_from_slice(source);
                body.push(b'\n');
            }
            let resp = http
                .post(format!("{}/_bulk", self.url))
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .expect("bulk request");
            assert!(resp.status().is_success(), "bulk: {}", resp.status());
            let v: serde_json::Value = resp.json().await.expect("bulk reply");
            assert_eq!(v["errors"], false, "bulk items failed: {v}");
        }
        let r = http
            .post(format!("{}/_refresh", self.url))
            .send()
            .await
            .expect("refresh");
        assert!(r.status().is_success(), "refresh: {}", r.status());
    }
}
