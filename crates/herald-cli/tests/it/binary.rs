//! The real `herald` binary as a child process, for the kill -9 tests.

use crate::helpers::*;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// A `herald serve` process started by this test.
pub struct Herald {
    pub child: Child,
    pub client: reqwest::Client,
    pub origin: String,
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("probe a free port");
    l.local_addr().expect("addr").port()
}

pub fn tail(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(4000);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Starts the binary on `data` and `port` and waits for /healthz. A port
/// still held by the killed process makes the new one exit; then retry.
pub async fn start(data: &Path, port: u16, logs: &Path, run: usize, extra_args: &[&str]) -> Herald {
    let deadline = Instant::now() + Duration::from_secs(90);
    let ca = data.join("tls").join("ca.pem");
    let origin = format!("https://localhost:{port}");
    let mut attempt = 0;
    loop {
        attempt += 1;
        let stderr_path = logs.join(format!("stderr-{run}-{attempt}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("serve")
            .arg("--data-dir")
            .arg(data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--amqp-listen", "127.0.0.1:0"])
            .args(extra_args)
            .current_dir(logs)
            .env("HERALD_ADMIN_TOKEN", TOKEN)
            .env_remove("HERALD_CONFIG")
            .env_remove("HERALD_MASTER_KEY")
            .env_remove("HERALD_DATABASE")
            .env_remove("HERALD_DATA_DIR")
            .env_remove("HERALD_LISTEN")
            .env_remove("HERALD_DELIVERY_ALLOWED_CIDRS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
            .kill_on_drop(true)
            .spawn()
            .expect("start herald serve");
        loop {
            if let Some(status) = child.try_wait().expect("poll the child") {
                assert!(
                    Instant::now() < deadline,
                    "herald serve keeps exiting ({status}): {}",
                    tail(&stderr_path)
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
                break;
            }
            if let Ok(pem) = std::fs::read(&ca)
                && reqwest::Certificate::from_pem(&pem).is_ok()
            {
                let client = client_for(&ca);
                if let Ok(r) = client.get(format!("{origin}/healthz")).send().await
                    && r.status().is_success()
                {
                    return Herald {
                        child,
                        client,
                        origin,
                    };
                }
            }
            assert!(
                Instant::now() < deadline,
                "herald serve never became healthy: {}",
                tail(&stderr_path)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Herald {
    pub async fn req(&self, req: reqwest::RequestBuilder) -> Resp {
        let r = read(req.send().await.expect("request reaches the server")).await;
        assert!(r.status < 500, "server error {}: {}", r.status, r.text);
        r
    }
}
