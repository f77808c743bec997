//! An HTTP/1.1 file server over a stand-in index root, on 127.0.0.1: what uv talks
//! to instead of PyPI and download.pytorch.org. GET and HEAD with keep-alive and
//! Content-Length, directory paths served from their `index.html`, 404 otherwise
//! (uv's `.metadata` probes included). It counts requests and body bytes per path
//! so tests and benchmarks can see what was downloaded, and injects faults: a delay
//! for paths under a prefix, a replacement body for one path (a corrupted wheel).
//! Std threads only; every thread stops and is joined on drop.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Requests (any answer) and body bytes of successful answers for one path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathCount {
    pub requests: u64,
    pub bytes: u64,
}

#[derive(Debug, Default)]
struct Faults {
    delays: Vec<(String, Duration)>,
    replacements: HashMap<String, Arc<Vec<u8>>>,
    /// The `Authorization` value every request must carry (a private index).
    required_authorization: Option<String>,
    /// Requests answered 401 for want of it.
    unauthorized: u64,
}

#[derive(Debug)]
struct Shared {
    root: PathBuf,
    stopping: AtomicBool,
    counts: Mutex<BTreeMap<String, PathCount>>,
    faults: Mutex<Faults>,
    /// Open connections, so drop can shut them and unblock their reads.
    connections: Mutex<HashMap<u64, TcpStream>>,
    next_connection: AtomicU64,
}

/// A running server; stops when dropped.
pub struct IndexServer {
    address: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for IndexServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexServer")
            .field("address", &self.address)
            .field("root", &self.shared.root)
            .finish()
    }
}

impl IndexServer {
    /// Serves `root` on a free loopback port.
    pub fn start(root: &Path) -> IndexServer {
        Self::start_on(root, 0)
    }

    /// Serves `root` on `port` of 127.0.0.1 (0: any free one).
    pub fn start_on(root: &Path, port: u16) -> IndexServer {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let address = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            root: root.to_owned(),
            stopping: AtomicBool::new(false),
            counts: Mutex::default(),
            faults: Mutex::default(),
            connections: Mutex::default(),
            next_connection: AtomicU64::new(0),
        });
        let accepting = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("standin-index-accept".to_owned())
            .spawn(move || accept_loop(&listener, &accepting))
            .unwrap();
        IndexServer { address, shared, acceptor: Some(acceptor) }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// Body bytes served since start (or the last reset), over every path.
    pub fn bytes_served(&self) -> u64 {
        self.counts().values().map(|count| count.bytes).sum()
    }

    /// Requests whose path starts with `prefix` (percent-encoded or not: paths are
    /// compared decoded, as `/files/torch-2.8.0+cu128-…`).
    pub fn requests_matching(&self, prefix: &str) -> u64 {
        self.matching(prefix).map(|count| count.requests).sum()
    }

    /// Body bytes served for paths starting with `prefix`.
    pub fn bytes_matching(&self, prefix: &str) -> u64 {
        self.matching(prefix).map(|count| count.bytes).sum()
    }

    /// What was served for exactly `path` (percent-encoded or not).
    pub fn count(&self, path: &str) -> PathCount {
        self.counts().get(&percent_decode(path)).copied().unwrap_or_default()
    }

    fn matching(&self, prefix: &str) -> impl Iterator<Item = PathCount> {
        let prefix = percent_decode(prefix);
        self.counts().into_iter().filter(move |(path, _)| path.starts_with(&prefix)).map(|(_, count)| count)
    }

    /// Per path (decoded, without query), what was served.
    pub fn counts(&self) -> BTreeMap<String, PathCount> {
        self.shared.counts.lock().unwrap().clone()
    }

    pub fn reset_counts(&self) {
        self.shared.counts.lock().unwrap().clear();
    }

    /// Every request for a path under `prefix` waits `delay` before its answer.
    pub fn set_delay(&self, prefix: &str, delay: Duration) {
        let mut faults = self.shared.faults.lock().unwrap();
        faults.delays.retain(|(existing, _)| existing != prefix);
        faults.delays.push((prefix.to_owned(), delay));
    }

    pub fn clear_delays(&self) {
        self.shared.faults.lock().unwrap().delays.clear();
    }

    /// Serves `body` for `path` (decoded, e.g. `/files/torch-2.8.0+cu128-….whl`)
    /// instead of the file.
    pub fn replace(&self, path: &str, body: Vec<u8>) {
        let path = percent_decode(path);
        self.shared.faults.lock().unwrap().replacements.insert(path, Arc::new(body));
    }

    /// Answers 401 (with a Basic challenge) to every request that does not carry
    /// `username:password` as HTTP basic auth: a private index and git host.
    pub fn require_basic_auth(&self, username: &str, password: &str) {
        use base64::Engine as _;
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        self.shared.faults.lock().unwrap().required_authorization = Some(format!("Basic {pair}"));
    }

    /// Requests refused for want of the required credential.
    pub fn unauthorized_requests(&self) -> u64 {
        self.shared.faults.lock().unwrap().unauthorized
    }

    /// Serves the file for `path` again.
    pub fn restore(&self, path: &str) {
        self.shared.faults.lock().unwrap().replacements.remove(&percent_decode(path));
    }
}

impl Drop for IndexServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl IndexServer {
    /// Stops serving (upstream unreachable from here on): closes the listener and
    /// every connection. Dropping stops it too.
    pub fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the acceptor blocked in accept().
        let _ = TcpStream::connect(self.address);
        for stream in self.shared.connections.lock().unwrap().values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        if let Some(acceptor) = self.acceptor.take()
            && let Ok(connections) = acceptor.join()
        {
            for connection in connections {
                let _ = connection.join();
            }
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) -> Vec<JoinHandle<()>> {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        connections.retain(|connection| !connection.is_finished());
        let id = shared.next_connection.fetch_add(1, Ordering::SeqCst);
        if let Ok(clone) = stream.try_clone() {
            shared.connections.lock().unwrap().insert(id, clone);
        }
        // A connection accepted while drop was shutting the others down.
        if shared.stopping.load(Ordering::SeqCst) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let serving = Arc::clone(shared);
        let spawned = std::thread::Builder::new().name("standin-index-conn".to_owned()).spawn(move || {
            let _ = serve_connection(stream, &serving);
            serving.connections.lock().unwrap().remove(&id);
        });
        if let Ok(handle) = spawned {
            connections.push(handle);
        }
    }
    connections
}

struct Request {
    method: String,
    path: String,
    keep_alive: bool,
    authorization: Option<String>,
}

fn serve_connection(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    while !shared.stopping.load(Ordering::SeqCst) {
        let Some(request) = read_request(&mut reader)? else { return Ok(()) };
        respond(&mut writer, &request, shared)?;
        if !request.keep_alive {
            return Ok(());
        }
    }
    Ok(())
}

/// The next request on the connection; `None` when the client closed it.
fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad request line {line:?}")));
    };
    let mut keep_alive = version == "HTTP/1.1";
    let mut body_length = 0u64;
    let mut authorization = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            return Ok(None);
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            keep_alive = if value.eq_ignore_ascii_case("close") {
                false
            } else {
                keep_alive || value.eq_ignore_ascii_case("keep-alive")
            };
        } else if name.eq_ignore_ascii_case("content-length") {
            body_length = value.parse().unwrap_or(0);
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.to_owned());
        }
    }
    // A body is never expected; read it so the next request starts where it should.
    io::copy(&mut reader.take(body_length), &mut io::sink())?;
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Ok(Some(Request { method: method.to_owned(), path: percent_decode(path), keep_alive, authorization }))
}

enum Body {
    File(File, u64),
    Bytes(Arc<Vec<u8>>),
}

fn respond(writer: &mut TcpStream, request: &Request, shared: &Shared) -> io::Result<()> {
    let (delay, replacement) = {
        let mut faults = shared.faults.lock().unwrap();
        if let Some(required) = &faults.required_authorization
            && request.authorization.as_deref() != Some(required.as_str())
        {
            faults.unauthorized += 1;
            drop(faults);
            let connection = if request.keep_alive { "keep-alive" } else { "close" };
            let body = b"credentials required\n";
            let head = format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"standin\"\r\nContent-Type: text/plain\r\n\
                 Content-Length: {}\r\nConnection: {connection}\r\n\r\n",
                body.len()
            );
            writer.write_all(head.as_bytes())?;
            if request.method == "GET" {
                writer.write_all(body)?;
            }
            return writer.flush();
        }
        let delay = faults
            .delays
            .iter()
            .filter(|(prefix, _)| request.path.starts_with(prefix.as_str()))
            .map(|(_, delay)| *delay)
            .max();
        (delay, faults.replacements.get(&request.path).cloned())
    };
    if let Some(delay) = delay {
        std::thread::sleep(delay);
    }
    let (status, content_type, body) = if request.method != "GET" && request.method != "HEAD" {
        ("405 Method Not Allowed", "text/plain", Body::Bytes(Arc::new(b"only GET and HEAD\n".to_vec())))
    } else if let Some(replacement) = replacement {
        ("200 OK", content_type_of(&request.path), Body::Bytes(replacement))
    } else {
        match resolve(&shared.root, &request.path).and_then(|path| Some((File::open(&path).ok()?, path))) {
            Some((file, path)) => {
                let length = file.metadata()?.len();
                ("200 OK", content_type_of(&path.to_string_lossy()), Body::File(file, length))
            }
            None => ("404 Not Found", "text/plain", Body::Bytes(Arc::new(b"not found\n".to_vec()))),
        }
    };
    let length = match &body {
        Body::File(_, length) => *length,
        Body::Bytes(bytes) => bytes.len() as u64,
    };
    let connection = if request.keep_alive { "keep-alive" } else { "close" };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\
         Cache-Control: no-cache\r\nConnection: {connection}\r\n\r\n"
    );
    writer.write_all(head.as_bytes())?;
    let mut sent = 0;
    if request.method == "GET" {
        sent = match body {
            Body::File(file, _) => io::copy(&mut BufReader::with_capacity(1 << 20, file), writer)?,
            Body::Bytes(bytes) => {
                writer.write_all(&bytes)?;
                bytes.len() as u64
            }
        };
    }
    writer.flush()?;
    let mut counts = shared.counts.lock().unwrap();
    let count = counts.entry(request.path.clone()).or_default();
    count.requests += 1;
    // What was downloaded: files and replacements, not the text of an error.
    if status.starts_with("200") {
        count.bytes += sent;
    }
    Ok(())
}

/// The file for a URL path: only plain components below `root`, a directory
/// answered by its `index.html`.
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let relative = Path::new(path.trim_start_matches('/'));
    if path.contains('\0') || !relative.components().all(|part| matches!(part, Component::Normal(_))) {
        return None;
    }
    let mut file = root.join(relative);
    if file.is_dir() {
        file.push("index.html");
    }
    file.is_file().then_some(file)
}

fn content_type_of(path: &str) -> &'static str {
    if path.ends_with(".html") || path.ends_with('/') {
        "text/html; charset=utf-8"
    } else if path.ends_with(".json") {
        "application/json"
    } else if path.rsplit('/').next().is_some_and(|last| !last.contains('.')) {
        // A project page reached without its trailing slash.
        "text/html; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

pub use comfyfleet_config::spec::wheel::percent_decode;
