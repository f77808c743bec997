//! Headless Chromium (Debian's `chromium`) for the web page's tests: one-shot
//! `--dump-dom` and `--screenshot` runs, and a browser driven over the DevTools
//! protocol that signs in through the real form, so its session cookie is the one
//! the controller set.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tungstenite::WebSocket;

use crate::wait_until;

/// The Chromium binary, if this machine has one (`scripts/test` installs Debian's).
pub fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|dir| Path::new(dir).join(name))
            .find(|path| path.is_file())
    })
}

/// Flags every run needs here: no sandbox (tests run as root in CI containers), and
/// the controller's certificate, which is signed by its own CA, accepted.
fn base_flags(profile: &Path) -> Vec<String> {
    vec![
        "--headless".into(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        "--no-first-run".into(),
        "--ignore-certificate-errors".into(),
        "--window-size=1400,1000".into(),
        format!("--user-data-dir={}", profile.display()),
    ]
}

/// One Chromium run with `extra` flags in its own process group, killed whole (with
/// any process it left) when it ends or after a minute; its standard output.
fn run_once(profile: &Path, extra: &[String]) -> String {
    use std::os::unix::process::CommandExt;
    let out = profile.with_extension("stdout");
    let mut process = Chromium(
        Command::new(chromium().expect("chromium"))
            .args(base_flags(profile))
            .args(extra)
            .process_group(0)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("run chromium"),
    );
    let status = wait_until(Duration::from_secs(60), "chromium to finish", || process.0.try_wait().unwrap());
    drop(process);
    assert!(status.success(), "chromium {extra:?} failed: {status:?}");
    std::fs::read_to_string(&out).unwrap()
}

/// `chromium --headless --dump-dom URL` in a fresh profile (no cookies).
pub fn dump_dom(profile: &Path, url: &str) -> String {
    run_once(profile, &["--virtual-time-budget=3000".to_owned(), "--dump-dom".to_owned(), url.to_owned()])
}

/// `chromium --headless --screenshot=FILE URL` in a fresh profile.
pub fn screenshot(profile: &Path, url: &str, file: &Path) {
    run_once(profile, &[format!("--screenshot={}", file.display()), url.to_owned()]);
    assert!(file.is_file(), "chromium --screenshot {url} wrote nothing");
}

/// A headless Chromium driven over the DevTools protocol.
pub struct Browser {
    socket: WebSocket<TcpStream>,
    next_id: u64,
    // Last: the browser outlives its socket.
    _process: Chromium,
}

/// Chromium in its own process group; dropping it kills the whole group (the
/// browser, its zygote, GPU and renderer processes), even when a test panicked
/// while it was starting.
struct Chromium(Child);

impl Drop for Chromium {
    fn drop(&mut self) {
        let group = rustix::process::Pid::from_child(&self.0);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Browser {
    pub fn start(profile: &Path) -> Browser {
        std::fs::create_dir_all(profile).unwrap();
        use std::os::unix::process::CommandExt;
        let process = Chromium(
            Command::new(chromium().expect("chromium"))
                .args(base_flags(profile))
                .arg("--remote-debugging-port=0")
                .arg("about:blank")
                .process_group(0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromium"),
        );
        let port_file = profile.join("DevToolsActivePort");
        let port: u16 = wait_until(Duration::from_secs(30), "chromium's DevTools port", || {
            std::fs::read_to_string(&port_file).ok()?.lines().next()?.trim().parse().ok()
        });
        let targets = wait_until(Duration::from_secs(30), "chromium's page target", || {
            let list: Value = serde_json::from_str(&http_get(port, "/json/list")?).ok()?;
            list.as_array()?
                .iter()
                .find(|target| target["type"] == "page")
                .and_then(|target| target["webSocketDebuggerUrl"].as_str().map(str::to_owned))
        });
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let (socket, _) = tungstenite::client(targets.as_str(), stream).expect("DevTools websocket");
        let mut browser = Browser { socket, next_id: 1, _process: process };
        browser.call("Page.enable", json!({}));
        browser.call("Runtime.enable", json!({}));
        browser
    }

    /// Sends a DevTools command and returns its result (events in between are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let message = json!({ "id": id, "method": method, "params": params }).to_string();
        self.socket.send(tungstenite::Message::text(message)).unwrap();
        loop {
            let message = self.socket.read().unwrap_or_else(|error| panic!("DevTools {method}: {error}"));
            let Ok(text) = message.to_text() else { continue };
            let Ok(reply) = serde_json::from_str::<Value>(text) else { continue };
            if reply["id"] == id {
                assert!(reply["error"].is_null(), "DevTools {method} failed: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// A JavaScript expression's value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        result["result"]["value"].clone()
    }

    /// Loads `url` and waits until the document is complete.
    pub fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        self.wait_loaded();
    }

    pub fn wait_loaded(&mut self) {
        std::thread::sleep(Duration::from_millis(200));
        wait_until(Duration::from_secs(30), "the page to load", || {
            (self.eval("document.readyState") == "complete").then_some(())
        });
    }

    pub fn path(&mut self) -> String {
        self.eval("location.pathname + location.search").as_str().unwrap_or_default().to_owned()
    }

    pub fn dom(&mut self) -> String {
        self.eval("document.documentElement.outerHTML").as_str().unwrap_or_default().to_owned()
    }

    /// The whole page as a PNG.
    pub fn screenshot(&mut self, file: &Path) {
        let result =
            self.call("Page.captureScreenshot", json!({ "format": "png", "captureBeyondViewport": true }));
        let png = base64::engine::general_purpose::STANDARD.decode(result["data"].as_str().unwrap()).unwrap();
        std::fs::write(file, png).unwrap();
    }

    /// Signs in through the login form with `credential`, as a person would.
    pub fn sign_in(&mut self, base: &str, credential: &str) {
        self.open(&format!("{base}/login?next=/"));
        let script = format!(
            "document.getElementById('credential').value = {}; document.querySelector('form[action=\"/login\"]').submit(); true",
            Value::from(credential)
        );
        self.eval(&script);
        wait_until(Duration::from_secs(30), "the sign-in to land on the overview", || {
            std::thread::sleep(Duration::from_millis(200));
            (self.path() == "/" && self.eval("document.readyState") == "complete").then_some(())
        });
    }
}

/// A plain HTTP GET on loopback (the DevTools endpoint, which keeps connections
/// open: the body is read by its Content-Length): the body, if it answered 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Write;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        let read = stream.read(&mut buffer).ok()?;
        if read == 0 {
            return None;
        }
        received.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&received);
        let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
        let length: usize = head
            .lines()
            .find_map(|line| {
                line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
            })?
            .parse()
            .ok()?;
        if body.len() >= length {
            return head.starts_with("HTTP/1.1 200").then(|| body.to_owned());
        }
    }
}
