//! What the observability tests drive besides our binaries: plain HTTP on loopback,
//! and a real Prometheus (Debian's `prometheus` package) with its `promtool`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::process::Process;
use crate::wait_until;

/// An answer to a plain HTTP request.
pub struct HttpAnswer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// `GET path` on loopback `port` over HTTP/1.0 (the body ends when the server closes).
pub fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> Option<HttpAnswer> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(HttpAnswer { status, head: head.to_owned(), body: body.to_owned() })
}

fn find_binary(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
}

/// `promtool check metrics` of `text`: its exit status and what it said.
pub fn promtool_check_metrics(text: &str) -> (bool, String) {
    let promtool =
        find_binary("promtool").expect("promtool (Debian's prometheus package; scripts/test installs it)");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), said)
}

/// A real Prometheus scraping one target every second, on its own port and data dir.
pub struct Prometheus {
    pub port: u16,
    _process: Process,
}

impl Prometheus {
    /// Scrapes `http://127.0.0.1:target/metrics` with `token` as its bearer token.
    pub fn start(dir: &Path, target: u16, token: &str) -> Prometheus {
        std::fs::create_dir_all(dir).unwrap();
        let token_file = dir.join("token");
        std::fs::write(&token_file, token).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: comfyfleet\n    \
                 authorization:\n      credentials_file: {}\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n",
                token_file.display()
            ),
        )
        .unwrap();
        let port = crate::provision::free_port();
        let mut command =
            Command::new(find_binary("prometheus").expect("prometheus (Debian's prometheus package)"));
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let mut process = Process::spawn("prometheus", command, &dir.join("prometheus.log"));
        wait_until(Duration::from_secs(60), "Prometheus to be ready", || {
            process.assert_running();
            http_get(port, "/-/ready", &[]).filter(|answer| answer.status == 200).map(|_| ())
        });
        Prometheus { port, _process: process }
    }

    /// An instant PromQL query's result vector.
    pub fn query(&self, promql: &str) -> Option<Vec<Value>> {
        let encoded: String = promql
            .bytes()
            .map(|byte| {
                if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
                    char::from(byte).to_string()
                } else {
                    format!("%{byte:02X}")
                }
            })
            .collect();
        let answer = http_get(self.port, &format!("/api/v1/query?query={encoded}"), &[])?;
        let json: Value = serde_json::from_str(&answer.body).ok()?;
        json["data"]["result"].as_array().cloned()
    }

    /// The scrape target's health as Prometheus sees it.
    pub fn target_health(&self) -> Option<String> {
        let answer = http_get(self.port, "/api/v1/targets", &[])?;
        let json: Value = serde_json::from_str(&answer.body).ok()?;
        let target = &json["data"]["activeTargets"][0];
        Some(format!("{} {}", target["health"].as_str()?, target["lastError"].as_str().unwrap_or_default()))
    }
}
