//! A stand-in Hugging Face: a hub host and a CDN host on two loopback ports, behaving
//! as huggingface.co does for `…/resolve/<revision>/<file>`:
//!
//! - the hub answers `HEAD` and `GET` of an LFS file with a 302 to the CDN, carrying
//!   `X-Repo-Commit` (the commit `main` resolves to), `X-Linked-Etag` (the file's
//!   sha256, quoted) and `X-Linked-Size`; a small (non-LFS) file is answered 200
//!   with its bytes and a git-style `ETag`;
//! - with a token set, every hub request must carry `Authorization: Bearer TOKEN`
//!   (else 401);
//! - the CDN refuses any request that carries a credential (403), as a signed CDN
//!   URL does, serves `Range` requests (206), and in fault mode cuts a download
//!   midway;
//! - a file may be *declared* only (its sha256 and size, as for a 20 GB checkpoint
//!   the tests never download): the hub answers for it, the CDN has no bytes (404).
//!
//! Both count requests and the body bytes they sent per file. Std threads; stops on
//! drop.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

/// A file in a stand-in repository.
#[derive(Debug, Clone)]
pub enum HubFile {
    /// An LFS file with bytes: redirected to the CDN, which serves them.
    Lfs(Arc<Vec<u8>>),
    /// An LFS file the hub only describes (sha256, size): the CDN has no bytes.
    Declared { sha256: String, size: u64 },
    /// A small file kept in git: served by the hub itself, no sha256 header.
    Small(Arc<Vec<u8>>),
}

impl HubFile {
    pub fn sha256(&self) -> String {
        match self {
            HubFile::Lfs(bytes) | HubFile::Small(bytes) => hex::encode(Sha256::digest(bytes.as_slice())),
            HubFile::Declared { sha256, .. } => sha256.clone(),
        }
    }

    pub fn size(&self) -> u64 {
        match self {
            HubFile::Lfs(bytes) | HubFile::Small(bytes) => bytes.len() as u64,
            HubFile::Declared { size, .. } => *size,
        }
    }
}

/// Requests and body bytes sent, for one file (by sha256) or path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    pub requests: u64,
    pub bytes: u64,
}

#[derive(Debug, Default)]
struct State {
    /// repo (`org/name`) → (commit, path → file).
    repos: BTreeMap<String, (String, BTreeMap<String, HubFile>)>,
    token: Option<String>,
    /// Leave `X-Linked-Etag` out (a mirror that drops it): clients must hash.
    no_linked_etag: bool,
    /// Cut the next `cuts` CDN downloads after this many body bytes.
    cut_after: Option<(u64, u32)>,
    hub_requests: u64,
    unauthorized: u64,
    /// CDN requests refused for carrying a credential.
    cdn_refused_credentials: u64,
    cdn_served: BTreeMap<String, Served>,
    cdn_ranges: u64,
}

/// The running hub and CDN; both stop when dropped.
pub struct ModelHub {
    hub_port: u16,
    cdn_port: u16,
    state: Arc<Mutex<State>>,
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl ModelHub {
    pub fn start() -> ModelHub {
        let state = Arc::new(Mutex::new(State::default()));
        let stopping = Arc::new(AtomicBool::new(false));
        let hub = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let cdn = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let (hub_port, cdn_port) = (hub.local_addr().unwrap().port(), cdn.local_addr().unwrap().port());
        let threads = vec![
            serve(hub, Role::Hub { cdn_port }, state.clone(), stopping.clone()),
            serve(cdn, Role::Cdn, state.clone(), stopping.clone()),
        ];
        ModelHub { hub_port, cdn_port, state, stopping, threads }
    }

    /// The hub's base URL (what `--hf-endpoint` names).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.hub_port)
    }

    pub fn cdn_port(&self) -> u16 {
        self.cdn_port
    }

    /// Adds `file` at `path` of `repo`, whose `main` resolves to `commit`.
    pub fn add(&self, repo: &str, commit: &str, path: &str, file: HubFile) {
        let mut state = self.state.lock().unwrap();
        let entry =
            state.repos.entry(repo.to_owned()).or_insert_with(|| (commit.to_owned(), BTreeMap::new()));
        entry.0 = commit.to_owned();
        entry.1.insert(path.to_owned(), file);
    }

    /// Requires `Authorization: Bearer TOKEN` on every hub request.
    pub fn require_token(&self, token: &str) {
        self.state.lock().unwrap().token = Some(token.to_owned());
    }

    pub fn drop_linked_etag(&self, drop: bool) {
        self.state.lock().unwrap().no_linked_etag = drop;
    }

    /// Cuts the next `times` CDN downloads after `bytes` body bytes.
    pub fn cut_downloads(&self, bytes: u64, times: u32) {
        self.state.lock().unwrap().cut_after = Some((bytes, times));
    }

    pub fn hub_requests(&self) -> u64 {
        self.state.lock().unwrap().hub_requests
    }

    pub fn unauthorized(&self) -> u64 {
        self.state.lock().unwrap().unauthorized
    }

    pub fn cdn_refused_credentials(&self) -> u64 {
        self.state.lock().unwrap().cdn_refused_credentials
    }

    /// What the CDN sent of the file with this sha256.
    pub fn cdn_served(&self, sha256: &str) -> Served {
        self.state.lock().unwrap().cdn_served.get(sha256).copied().unwrap_or_default()
    }

    /// CDN requests that asked for a `Range`.
    pub fn cdn_ranges(&self) -> u64 {
        self.state.lock().unwrap().cdn_ranges
    }
}

impl Drop for ModelHub {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        for port in [self.hub_port, self.cdn_port] {
            let _ = TcpStream::connect(("127.0.0.1", port));
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Role {
    Hub { cdn_port: u16 },
    Cdn,
}

fn serve(
    listener: TcpListener,
    role: Role,
    state: Arc<Mutex<State>>,
    stopping: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut workers = Vec::new();
        for stream in listener.incoming() {
            if stopping.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = stream else { continue };
            let state = state.clone();
            workers.push(std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                let _ = answer(stream, role, &state);
            }));
            workers.retain(|worker: &JoinHandle<()>| !worker.is_finished());
        }
        for worker in workers {
            let _ = worker.join();
        }
    })
}

struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    Some(Request { method, path, headers })
}

fn answer(mut stream: TcpStream, role: Role, state: &Mutex<State>) -> std::io::Result<()> {
    let Some(request) = read_request(&stream) else { return Ok(()) };
    let head = request.method == "HEAD";
    let reply = match role {
        Role::Hub { cdn_port } => hub(&request, cdn_port, state),
        Role::Cdn => cdn(&request, state),
    };
    let mut text = format!("HTTP/1.1 {}\r\nConnection: close\r\n", reply.status);
    for (name, value) in &reply.headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    let length = reply.length.unwrap_or(reply.body.len() as u64);
    text.push_str(&format!("Content-Length: {length}\r\n\r\n"));
    stream.write_all(text.as_bytes())?;
    if !head {
        let body = &reply.body[..reply.cut.map_or(reply.body.len(), |cut| cut.min(reply.body.len()))];
        for chunk in body.chunks(64 * 1024) {
            stream.write_all(chunk)?;
        }
        if let Some(sha256) = &reply.counted {
            state.lock().unwrap().cdn_served.entry(sha256.clone()).or_default().bytes += body.len() as u64;
        }
    }
    stream.flush()?;
    let _ = stream.shutdown(Shutdown::Both);
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    Ok(())
}

#[derive(Default)]
struct Reply {
    status: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Content-Length when it is not the body's (a HEAD, a cut body).
    length: Option<u64>,
    /// Stop sending the body after this many bytes (the fault mode).
    cut: Option<usize>,
    /// Count the body sent against this sha256.
    counted: Option<String>,
}

fn status(text: &str, body: &str) -> Reply {
    Reply { status: text.to_owned(), body: body.as_bytes().to_vec(), ..Reply::default() }
}

fn hub(request: &Request, cdn_port: u16, state: &Mutex<State>) -> Reply {
    let mut state = state.lock().unwrap();
    state.hub_requests += 1;
    if let Some(token) = &state.token
        && request.headers.get("authorization") != Some(&format!("Bearer {token}"))
    {
        state.unauthorized += 1;
        return status("401 Unauthorized", "Invalid credentials in Authorization header");
    }
    let Some((repo, after)) = request.path.split_once("/resolve/") else {
        return status("404 Not Found", "Repository not found");
    };
    let repo = repo.trim_start_matches('/');
    let Some((revision, file)) = after.split_once('/') else {
        return status("404 Not Found", "Entry not found");
    };
    let file = file.split('?').next().unwrap_or(file);
    let Some((commit, files)) = state.repos.get(repo) else {
        return status("404 Not Found", "Repository not found");
    };
    if revision != "main" && revision != commit {
        return status("404 Not Found", "Revision not found");
    }
    let Some(found) = files.get(file) else { return status("404 Not Found", "Entry not found") };
    let mut reply = Reply { headers: vec![("X-Repo-Commit".to_owned(), commit.clone())], ..Reply::default() };
    match found {
        HubFile::Small(bytes) => {
            reply.status = "200 OK".to_owned();
            let oid = hex::encode(&Sha256::digest(bytes.as_slice())[..20]);
            reply.headers.push(("ETag".to_owned(), format!("\"{oid}\"")));
            reply.body = bytes.to_vec();
        }
        HubFile::Lfs(_) | HubFile::Declared { .. } => {
            let sha256 = found.sha256();
            reply.status = "302 Found".to_owned();
            reply
                .headers
                .push(("Location".to_owned(), format!("http://127.0.0.1:{cdn_port}/lfs/{sha256}?sig=x")));
            if !state.no_linked_etag {
                reply.headers.push(("X-Linked-Etag".to_owned(), format!("\"{sha256}\"")));
            }
            reply.headers.push(("X-Linked-Size".to_owned(), found.size().to_string()));
            reply.headers.push(("ETag".to_owned(), format!("\"{sha256}\"")));
        }
    }
    reply
}

fn cdn(request: &Request, state: &Mutex<State>) -> Reply {
    let mut state = state.lock().unwrap();
    if request.headers.contains_key("authorization") {
        state.cdn_refused_credentials += 1;
        return status("403 Forbidden", "the CDN takes no credential: the signed URL is the authorization");
    }
    let sha256 = request.path.trim_start_matches("/lfs/").split('?').next().unwrap_or("").to_owned();
    let bytes = state.repos.values().flat_map(|(_, files)| files.values()).find_map(|file| match file {
        HubFile::Lfs(bytes) if file.sha256() == sha256 => Some(bytes.clone()),
        _ => None,
    });
    let Some(bytes) = bytes else { return status("404 Not Found", "no bytes for this object") };
    state.cdn_served.entry(sha256.clone()).or_default().requests += 1;
    let total = bytes.len() as u64;
    let start = match request.headers.get("range").and_then(|range| range.strip_prefix("bytes=")) {
        Some(range) => {
            state.cdn_ranges += 1;
            match range.split('-').next().and_then(|start| start.parse::<u64>().ok()) {
                Some(start) if start < total => start,
                _ => return status("416 Range Not Satisfiable", ""),
            }
        }
        None => 0,
    };
    let body = bytes[start as usize..].to_vec();
    let mut reply = Reply {
        status: if start > 0 { "206 Partial Content".to_owned() } else { "200 OK".to_owned() },
        length: Some(body.len() as u64),
        counted: (request.method == "GET").then(|| sha256.clone()),
        ..Reply::default()
    };
    if start > 0 {
        reply.headers.push(("Content-Range".to_owned(), format!("bytes {start}-{}/{total}", total - 1)));
    }
    reply.headers.push(("Accept-Ranges".to_owned(), "bytes".to_owned()));
    if request.method == "GET"
        && let Some((after, times)) = state.cut_after
        && times > 0
    {
        reply.cut = Some(after as usize);
        state.cut_after = Some((after, times - 1));
    }
    reply.body = body;
    reply
}
