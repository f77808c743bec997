//! Issue 23, points 3–6 and 10: what the controller fetches, and what its package
//! cache serves whom. Every URL a spec names passes the controller's source policy
//! (a stand-in cloud metadata service on 127.0.0.2 is never asked, directly or by a
//! redirect); an upstream failure reads the same whatever answered; a machine is
//! served only the pages, files and git bundles its own revision names, a commit only
//! in its canonical spelling; files honour byte ranges, and a hundred readers that
//! stop reading hold little of the controller's memory. Real controller, agents, CLI
//! and uv; requests with a machine's own identity come from Python's ssl.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use comfyfleet_e2e::provision::Fleet;
use comfyfleet_e2e::standin::index::IndexLayout;
use comfyfleet_e2e::standin::packages::plain_module;
use comfyfleet_e2e::{Agent, wait_until};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// An HTTP server on `host` that answers every request with what `answer` says for
/// its path, and counts the requests.
fn server(host: &str, answer: impl Fn(&str) -> String + Send + 'static) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((host, 0)).unwrap();
    let address = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            counted.fetch_add(1, Ordering::SeqCst);
            let text = String::from_utf8_lossy(&head);
            let path = text.split(' ').nth(1).unwrap_or("/").to_owned();
            let _ = stream.write_all(answer(&path).as_bytes());
        }
    });
    (address, requests)
}

/// A stand-in cloud metadata service: answers everything with "secret" data.
fn metadata_service() -> (SocketAddr, Arc<AtomicUsize>) {
    server("127.0.0.2", |_| {
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 27\r\nConnection: close\r\n\r\n\
         {\"AccessKeyId\": \"AKIAXXXX\"}"
            .to_owned()
    })
}

fn not_found() -> String {
    "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found".to_owned()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The cache's key of an index or repository URL.
fn key(url: &str) -> String {
    sha256_hex(url.as_bytes())[..16].to_owned()
}

/// One GET of the controller's `path` with `agent`'s machine identity: status,
/// headers (lower-case names), body length, body sha256, body text (its start).
fn cache_get(fleet: &Fleet, agent: &Agent, path: &str, headers: &[(&str, &str)]) -> Value {
    let script = r#"
import hashlib, http.client, json, ssl, sys, urllib.parse
url, identity, headers = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
parts = urllib.parse.urlsplit(url)
context = ssl.create_default_context(cafile=identity + "/ca.crt")
context.load_cert_chain(identity + "/machine.crt", identity + "/machine.key")
connection = http.client.HTTPSConnection(parts.hostname, parts.port, context=context, timeout=300)
connection.request("GET", parts.path, headers=headers)
response = connection.getresponse()
body = response.read()
print(json.dumps({
    "status": response.status,
    "headers": {name.lower(): value for name, value in response.getheaders()},
    "length": len(body),
    "sha256": hashlib.sha256(body).hexdigest(),
    "text": body[:1 << 16].decode("utf-8", "replace"),
}))
"#;
    let headers: serde_json::Map<String, Value> =
        headers.iter().map(|(name, value)| ((*name).to_owned(), Value::from(*value))).collect();
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(format!("{}{path}", fleet.controller.url))
        .arg(agent.data_dir.join("identity"))
        .arg(Value::Object(headers).to_string())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The controller's resident memory, in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// A spec applied by `fleet` fails, naming the policy; returns what it said.
fn refused(fleet: &Fleet, spec: &str) -> String {
    let path = fleet.dir.path().join("probe.toml");
    std::fs::write(&path, spec).unwrap();
    fleet.cli(&["apply", "-f", path.to_str().unwrap()]).failure()
}

#[test]
fn sources_the_policy_refuses_are_never_asked_and_failures_read_alike() {
    let fleet = Fleet::start();
    let base = fleet.base_url();
    let (metadata, asked) = metadata_service();
    let spec = fleet
        .spec(|_| {})
        .replace("trusted_hosts = [\"127.0.0.1\"]", "trusted_hosts = [\"127.0.0.1\", \"127.0.0.2\"]");
    let evil = format!("http://{metadata}");
    let probes = [
        ("index.url", spec.replace(&format!("url = \"{base}/simple\""), &format!("url = \"{evil}/simple\""))),
        (
            "the torch index for cu128",
            spec.replace(
                &format!("index = \"{base}/whl/{{cuda}}\""),
                &format!("index = \"{evil}/{{cuda}}\""),
            ),
        ),
        (
            "index.extra",
            spec.replace("[index]\n", &format!("[index]\nextra = [\"{evil}/latest/meta-data\"]\n")),
        ),
        (
            "optimization sageattention: a wheel",
            spec.replacen(&format!("  url = \"{base}"), &format!("  url = \"{evil}"), 1),
        ),
    ];
    for (what, probe) in probes {
        assert_ne!(probe, spec, "{what}: the probe changes the spec");
        let error = refused(&fleet, &probe);
        assert!(error.contains("source policy refuses"), "{what}: {error}");
        assert!(error.contains(&format!("{what}: the controller does not fetch {evil}")), "{what}: {error}");
        assert!(error.contains("--source-allow-host 127.0.0.2"), "{what}: {error}");
    }
    assert_eq!(asked.load(Ordering::SeqCst), 0, "the metadata service was never asked");
    let environments = fleet.cli(&["env", "list", "-o", "json"]).success();
    assert!(!environments.contains("render-prod"), "nothing stored: {environments}");

    // `cache fill` tells a port that answers 404 from one that refuses connections
    // by nothing: both wheels are "unreachable", in the same words.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let wheel_line = format!("  url = \"{base}");
    let wheels: Vec<usize> = spec.match_indices(&wheel_line).map(|(at, _)| at).collect();
    let (first, second) = (wheels[0], wheels[1]);
    let path_of = |at: usize| {
        let line = spec[at..].lines().next().unwrap();
        line.trim().trim_start_matches("url = \"").trim_end_matches('"').trim_start_matches(&base).to_owned()
    };
    let (refusing, answering) = (path_of(first), path_of(second));
    let spec = spec
        .replace(&format!("{base}{refusing}"), &format!("http://{closed}{refusing}"))
        .replace(&format!("{base}{answering}"), &format!("{base}/gone{answering}"));
    fleet.apply(&spec);
    let filled = fleet.cli(&["cache", "fill", "render-prod"]).failure();
    // The controller answered: what failed was upstream, and the error says so.
    assert!(!filled.contains("the controller is unavailable"), "{filled}");
    assert!(filled.contains("2 of ") && filled.contains(" files of render-prod@"), "{filled}");
    assert!(
        filled.contains("could not be cached") && filled.contains("run `comfyfleet cache fill render-prod@"),
        "{filled}"
    );
    let line = |url: &str| {
        let line =
            filled.lines().find(|line| line.contains(url)).unwrap_or_else(|| panic!("{url}: {filled}"));
        line.replace(url, "URL")
    };
    let from_closed = line(&format!("http://{closed}{refusing}"));
    let from_404 = line(&format!("{base}/gone{answering}"));
    assert!(from_closed.contains("unreachable"), "{filled}");
    assert_eq!(from_closed, from_404, "a closed port reads as an answer: {filled}");
    for detail in ["404", "refused", "onnect", "Not Found"] {
        assert!(!filled.contains(detail), "{detail}: {filled}");
    }
}

#[test]
fn a_machine_is_served_only_what_its_own_revision_names() {
    let fleet = Fleet::start();
    let base = fleet.base_url();
    let index = fleet.world.server.root().to_owned();
    // On the default index, in no lock: reached only through the index's page.
    let big =
        IndexLayout::publish(&index, &[plain_module("standin-big", "1.0.0").padding(64 << 20)]).remove(0);
    // An extra index that redirects one project's page to the metadata service.
    let (metadata, asked) = metadata_service();
    let (redirector, redirected) = server("127.0.0.1", move |path| {
        if path.starts_with("/simple/evil") {
            format!(
                "HTTP/1.1 302 Found\r\nLocation: http://{metadata}/latest/meta-data/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        } else {
            not_found()
        }
    });
    let extra = format!("http://{redirector}/simple");
    let spec = fleet.spec(|_| {}).replace("[index]\n", &format!("[index]\nextra = [\"{extra}\"]\n"));
    let targeted = fleet.agent("targeted", "rtx4090-x1-570");
    let stranger = fleet.agent("stranger", "rtx4090-x1-570");
    fleet.apply(&spec);
    let id = fleet.machine_id("targeted");
    let started =
        fleet.cli(&["rollout", "start", "render-prod", "--machines", &id, "--wait", "--timeout", "5m"]);
    assert!(started.success().contains("succeeded: 1 active"));
    let shown: Value =
        serde_json::from_str(&fleet.cli(&["env", "show", "render-prod", "-o", "json"]).success()).unwrap();
    let commit = shown["spec"]["comfyui"]["commit"].as_str().unwrap().to_owned();
    let comfyui = shown["spec"]["comfyui"]["git"].as_str().unwrap().to_owned();
    let bundle = format!("/cache/v1/git/{}/{commit}.bundle", key(&comfyui));
    let page = format!("/cache/v1/index/{}/standin-big/", key(&format!("{base}/simple")));
    let file = format!("/cache/v1/files/{}/{}", big.wheel.sha256, big.wheel.file_name);

    // The machine the revision targets: its index's page, rebuilt, links the file.
    let served = cache_get(&fleet, &targeted, &page, &[]);
    assert_eq!(served["status"], 200, "{served}");
    let text = served["text"].as_str().unwrap();
    assert!(text.contains(&format!("href=\"{file}#sha256={}\"", big.wheel.sha256)), "{text}");
    assert_eq!(cache_get(&fleet, &targeted, &bundle, &[])["status"], 200);

    // Another enrolled machine, assigned nothing: no page, no bundle, and no file
    // even though a page the cache served links it; upstream is not asked for it.
    for path in [&page, &bundle, &file] {
        let answer = cache_get(&fleet, &stranger, path, &[]);
        assert_eq!(answer["status"], 403, "{path}: {answer}");
        assert!(answer["text"].as_str().unwrap().contains("assigned no revision"), "{answer}");
    }
    assert_eq!(fleet.world.server.count(&big.url_path).requests, 0, "the file was never fetched");

    // A commit in another spelling is refused without work: no second bundle.
    let bundles = fleet.controller.data_dir.join("cache/git/bundles");
    let upper = format!("/cache/v1/git/{}/{}.bundle", key(&comfyui), commit.to_ascii_uppercase());
    let answer = cache_get(&fleet, &targeted, &upper, &[]);
    assert_eq!(answer["status"], 404, "{answer}");
    let made: Vec<String> = std::fs::read_dir(&bundles)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(made.contains(&format!("{commit}.bundle")), "{made:?}");
    assert!(!made.iter().any(|name| name.contains(&commit.to_ascii_uppercase())), "{made:?}");

    // A page whose upstream redirects to the metadata service: not followed, and
    // said in words that tell nothing of what is there.
    let evil = format!("/cache/v1/index/{}/evil/", key(&extra));
    let answer = cache_get(&fleet, &targeted, &evil, &[]);
    assert_eq!(answer["status"], 502, "{answer}");
    let said = answer["text"].as_str().unwrap();
    assert!(said.contains("unreachable") && !said.contains("127.0.0.2") && !said.contains("AKIA"), "{said}");
    assert!(redirected.load(Ordering::SeqCst) > 0, "the extra index was asked");
    assert_eq!(asked.load(Ordering::SeqCst), 0, "the metadata service never was");

    // Byte ranges: one byte, the last 100, one past the end.
    let whole = cache_get(&fleet, &targeted, &file, &[]);
    assert_eq!(
        (whole["status"].as_u64(), whole["sha256"].as_str()),
        (Some(200), Some(big.wheel.sha256.as_str()))
    );
    assert_eq!(whole["headers"]["accept-ranges"], "bytes");
    let size = big.wheel.size;
    let wheel = std::fs::read(&big.wheel.path).unwrap();
    let first = cache_get(&fleet, &targeted, &file, &[("Range", "bytes=0-0")]);
    assert_eq!(first["status"], 206, "{first}");
    assert_eq!(first["headers"]["content-range"], format!("bytes 0-0/{size}"));
    assert_eq!(first["sha256"], sha256_hex(&wheel[..1]));
    let last = cache_get(&fleet, &targeted, &file, &[("Range", "bytes=-100")]);
    assert_eq!((last["status"].as_u64(), last["length"].as_u64()), (Some(206), Some(100)));
    assert_eq!(last["sha256"], sha256_hex(&wheel[wheel.len() - 100..]));
    let past = cache_get(&fleet, &targeted, &file, &[("Range", &format!("bytes={size}-"))]);
    assert_eq!(past["status"], 416, "{past}");
    assert_eq!(past["headers"]["content-range"], format!("bytes */{size}"));
    assert_eq!(fleet.world.server.count(&big.url_path).requests, 1, "fetched from upstream once");

    // A hundred readers that ask for the file and read nothing.
    let pid = fleet.controller.process.pid();
    let before = resident_bytes(pid);
    let served_before = served_bytes(&fleet);
    let script = r#"
import socket, ssl, sys, urllib.parse
url, identity, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
parts = urllib.parse.urlsplit(url)
context = ssl.create_default_context(cafile=identity + "/ca.crt")
context.load_cert_chain(identity + "/machine.crt", identity + "/machine.key")
held = []
for _ in range(count):
    raw = socket.create_connection((parts.hostname, parts.port))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    tls = context.wrap_socket(raw, server_hostname=parts.hostname)
    tls.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: {parts.hostname}\r\n\r\n".encode())
    held.append(tls)
print("ready", flush=True)
sys.stdin.read()
"#;
    let mut readers = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(format!("{}{file}", fleet.controller.url))
        .arg(targeted.data_dir.join("identity"))
        .arg("100")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(readers.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    // Until every answer has filled what the connections take: served bytes stop growing.
    let mut last = served_bytes(&fleet);
    wait_until(Duration::from_secs(60), "the answers to stall", || {
        std::thread::sleep(Duration::from_secs(2));
        let now = served_bytes(&fleet);
        let settled = now == last && now > served_before;
        last = now;
        settled.then_some(())
    });
    let during = resident_bytes(pid);
    drop(readers.stdin.take());
    let _ = readers.kill();
    let _ = readers.wait();
    let grown = during.saturating_sub(before);
    eprintln!(
        "100 stalled readers: VmRSS {} -> {} MiB; {} MiB sent to them",
        before >> 20,
        during >> 20,
        (last - served_before) >> 20
    );
    assert!(last - served_before < 100 * size / 2, "the readers stalled before most of the file");
    // Each holds its connection and at most two 32 KiB chunks (a whole-file stream
    // held ~870 KiB each).
    assert!(grown < 40 << 20, "100 stalled readers grew the controller by {} MiB", grown >> 20);
}

/// `cache status`'s bytes served so far.
fn served_bytes(fleet: &Fleet) -> u64 {
    let status: Value =
        serde_json::from_str(&fleet.cli(&["cache", "status", "-o", "json"]).success()).unwrap();
    status["bytes_served"].as_u64().unwrap()
}
