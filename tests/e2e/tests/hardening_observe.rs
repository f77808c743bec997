//! What an attacker found on `/metrics`, the web sign-in and the controller's log,
//! fixed (issue 23, points 7, 8, 9 and 11). Each test here failed before its fix.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)] // test helpers fail loudly by design

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use comfyfleet_e2e::grpc::{AgentFiles, RawSession, channel, hello, inventory};
use comfyfleet_e2e::observe::{HttpAnswer, Prometheus, http_get, promtool_check_metrics};
use comfyfleet_e2e::provision::free_port;
use comfyfleet_e2e::{Agent, Controller, profile, test_dir, wait_until};
use comfyfleet_proto::v1 as pb;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const METRICS_TOKEN: &str = "metrics-token-0123456789abcdef";

/// The value of the sample line that starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|line| line.starts_with(prefix))?.rsplit_once(' ')?.1.parse().ok()
}

fn scrape(port: u16, headers: &[(&str, &str)]) -> HttpAnswer {
    let bearer = format!("Bearer {METRICS_TOKEN}");
    let mut all = vec![("Authorization", bearer.as_str())];
    all.extend_from_slice(headers);
    let answer = http_get(port, "/metrics", &all).expect("/metrics answers");
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer
}

/// A GPU whose NVML name holds quotes and a backslash used to break the whole page
/// (promtool refused it; Prometheus marked the target down) and `X",status="…` forged
/// a label. Every label value is escaped now: promtool and a real Prometheus accept the
/// page, and the name is one label's value, as the GPU reported it.
#[test]
fn a_gpu_name_with_quotes_and_backslashes_stays_one_label_value() {
    let dir = test_dir();
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, format!("{METRICS_TOKEN}\n")).unwrap();
    let metrics_port = free_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let controller = Controller::start_with(
        &dir.path().join("controller"),
        0,
        &["--metrics-listen", &listen, "--metrics-token-file", token_file.to_str().unwrap()],
    );
    let hostile = r#"Evil "GPU" X",status="forged\ card"#;
    let mut machine = profile("rtx4090-x1-570");
    machine["gpus"][0]["name"] = Value::from(hostile);
    let token = controller.create_token(&[]);
    let _agent = Agent::start(dir.path(), "evil-gpu", &machine, &controller.url, Some(&token), &[]);
    wait_until(Duration::from_secs(30), "the hostile GPU name in the inventory", || {
        (controller.machine("evil-gpu")?["gpus"][0]["name"] == hostile).then_some(())
    });

    // GPU Feature Discovery's spelling (spaces to dashes), escaped as both formats say.
    let product = r#"Evil-"GPU"-X",status="forged\-card"#;
    let escaped = r#"nvidia_com_gpu_product="Evil-\"GPU\"-X\",status=\"forged\\-card""#;
    let plain = scrape(metrics_port, &[]);
    let (ok, said) = promtool_check_metrics(&plain.body);
    assert!(ok, "promtool check metrics: {said}\n{}", plain.body);
    let gpus = plain.body.lines().find(|line| line.starts_with("comfyfleet_gpus{")).unwrap();
    assert!(gpus.contains(escaped), "{gpus}");
    let openmetrics = scrape(metrics_port, &[("Accept", "application/openmetrics-text;version=1.0.0")]);
    assert!(openmetrics.body.contains(escaped), "{}", openmetrics.body);
    assert!(openmetrics.body.ends_with("# EOF\n"));

    // Prometheus (which asks for OpenMetrics) scrapes it, and reads the name back whole.
    let prometheus = Prometheus::start(&dir.path().join("prometheus"), metrics_port, METRICS_TOKEN);
    let series = wait_until(Duration::from_secs(60), "Prometheus to scrape the GPU", || {
        let result = prometheus.query("comfyfleet_gpus")?;
        (!result.is_empty()).then_some(result)
    });
    assert!(prometheus.target_health().unwrap().starts_with("up"), "{:?}", prometheus.target_health());
    assert_eq!(series.len(), 1, "{series:?}");
    let labels = &series[0]["metric"];
    assert_eq!(labels["nvidia_com_gpu_product"], product, "{labels}");
    assert!(labels.get("status").is_none(), "a forged label: {labels}");
    assert!(prometheus.query("comfyfleet_gpus{status=\"forged\"}").unwrap().is_empty());
    let online = prometheus.query("comfyfleet_machines{status=\"online\"}").unwrap();
    assert_eq!(online[0]["value"][1], "1", "{online:?}");
}

/// A connection from `from` to `to` (tokio, to pick the source address).
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(to).await
}

/// `/metrics` was served without any bound: slow connections were held for 90 s and
/// more, from one address without limit, and every scrape read the whole fleet. Now it
/// has the web port's limits — a connection whose request head is not in after 30 s is
/// closed, an address past `--max-connections-per-address` is refused at accept while
/// others are served — and scrapes that arrive together share one page (one read).
#[test]
fn metrics_connections_have_the_other_ports_limits_and_a_scrape_flood_reads_the_fleet_once() {
    let dir = test_dir();
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, format!("{METRICS_TOKEN}\n")).unwrap();
    let metrics_port = free_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let _controller = Controller::start_with(
        &dir.path().join("controller"),
        0,
        &[
            "--metrics-listen",
            &listen,
            "--metrics-token-file",
            token_file.to_str().unwrap(),
            "--max-connections-per-address",
            "20",
        ],
    );
    let target: SocketAddr = listen.parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (held, opened) = runtime.block_on(async {
        // Twenty connections from 127.0.0.2 that send half a request head and wait.
        let opened = Instant::now();
        let mut held = Vec::new();
        for _ in 0..20 {
            let mut tcp = connect_from("127.0.0.2", target).await.unwrap();
            tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
            held.push(tcp);
        }
        // Past the cap, the address's new connections are closed at once.
        let mut buffer = [0u8; 64];
        for index in 0..5 {
            let mut tcp = connect_from("127.0.0.2", target).await.unwrap();
            let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buffer)).await;
            assert!(
                matches!(read, Ok(Ok(0) | Err(_))),
                "connection {index} past the cap still open: {read:?}"
            );
        }
        (held, opened)
    });

    // Another address is served throughout; a flood of scrapes costs one fleet read.
    let reads = |text: &str| {
        sample(text, "comfyfleet_store_operation_duration_seconds_count{operation=\"list_machines\"}")
            .unwrap()
    };
    let before = reads(&scrape(metrics_port, &[]).body);
    let flood: Vec<_> =
        (0..16).map(|_| std::thread::spawn(move || scrape(metrics_port, &[]).status)).collect();
    for scraper in flood {
        assert_eq!(scraper.join().unwrap(), 200);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let after = reads(&scrape(metrics_port, &[]).body);
    // The flood's pages, plus the one just read.
    assert!(after - before <= 4.0, "16 scrapes read the fleet {} times", after - before - 1.0);

    // The slow connections are closed at the first-request deadline the TLS and web
    // ports use (30 s after accept), not before.
    runtime.block_on(async {
        let mut buffer = [0u8; 64];
        for (index, mut tcp) in held.into_iter().enumerate() {
            let left = Duration::from_secs(50).saturating_sub(opened.elapsed());
            let read = tokio::time::timeout(left, tcp.read(&mut buffer)).await;
            assert!(matches!(read, Ok(Ok(0) | Err(_))), "slow connection {index} still open: {read:?}");
        }
    });
    let closed = opened.elapsed();
    assert!(closed > Duration::from_secs(25), "closed after {closed:?}: before the 30 s deadline");
    // And the address may connect again.
    assert_eq!(scrape(metrics_port, &[]).status, 200);
}

/// An HTTP/1.1 client of the web page over TLS from a chosen loopback address,
/// keeping its connection alive between requests.
struct WebClient {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buffer: Vec<u8>,
}

impl WebClient {
    fn connect(port: u16, ca_pem: &str, from: &str) -> WebClient {
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let tcp = runtime.block_on(connect_from(from, to)).unwrap().into_std().unwrap();
        tcp.set_nonblocking(false).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let connection =
            rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
                .unwrap();
        WebClient { stream: rustls::StreamOwned::new(connection, tcp), buffer: Vec::new() }
    }

    /// Sends one request and reads its answer (bodies carry a Content-Length).
    fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> HttpAnswer {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if method == "POST" {
            request.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        self.stream.write_all(request.as_bytes()).unwrap();
        let head_end = loop {
            if let Some(at) = self.buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                break at;
            }
            self.fill();
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).into_owned();
        let mut answer = HttpAnswer {
            status: head.split_whitespace().nth(1).unwrap().parse().unwrap(),
            head,
            body: String::new(),
        };
        let length: usize = answer.header("content-length").map_or(0, |value| value.parse().unwrap());
        while self.buffer.len() < head_end + 4 + length {
            self.fill();
        }
        answer.body = String::from_utf8_lossy(&self.buffer[head_end + 4..head_end + 4 + length]).into_owned();
        self.buffer.drain(..head_end + 4 + length);
        answer
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let read = self.stream.read(&mut chunk).expect("the web page answers");
        assert!(read > 0, "the web page closed the connection");
        self.buffer.extend_from_slice(&chunk[..read]);
    }
}

/// `application/x-www-form-urlencoded` of one value.
fn form_value(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

fn sign_in(client: &mut WebClient, credential: &str, next: &str) -> HttpAnswer {
    let body = format!("credential={}&next={}", form_value(credential), form_value(next));
    client.send("POST", "/login", &[], &body)
}

/// The session cookie a sign-in set.
fn session_cookie(answer: &HttpAnswer) -> String {
    let cookie = answer.header("set-cookie").unwrap_or_else(|| panic!("no cookie: {}", answer.head));
    cookie.split(';').next().unwrap().to_owned()
}

/// Whether `cookie` is a live session: the overview answers instead of the sign-in.
fn signed_in(client: &mut WebClient, cookie: &str) -> bool {
    let answer = client.send("GET", "/", &[("Cookie", cookie)], "");
    match answer.status {
        200 => true,
        303 => false,
        other => panic!("the overview answered {other}: {}", answer.head),
    }
}

struct WebFleet {
    _dir: tempfile::TempDir,
    controller: Controller,
    port: u16,
    ca: String,
}

impl WebFleet {
    fn start() -> WebFleet {
        let dir = test_dir();
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let controller =
            Controller::start_with(&dir.path().join("controller"), 0, &["--web-listen", &listen]);
        let ca = comfyfleet_e2e::grpc::controller_ca(&controller.data_dir);
        wait_until(Duration::from_secs(20), "the web page to listen", || TcpStream::connect(&listen).ok());
        WebFleet { _dir: dir, controller, port, ca }
    }

    fn viewer(&self, name: &str) -> String {
        let created = self
            .controller
            .cli(&["credentials", "create", name, "--role", "viewer", "--token-only"])
            .success();
        created.trim().to_owned()
    }

    fn client(&self, from: &str) -> WebClient {
        WebClient::connect(self.port, &self.ca, from)
    }
}

/// 10,050 sign-ins of one viewer used to fill the controller's 10,000 sessions and
/// evict everyone else's. A credential now holds at most 16: its next sign-in ends its
/// own oldest session, never another user's.
#[test]
fn a_viewer_signing_in_ten_thousand_times_signs_no_one_else_out() {
    let web = WebFleet::start();
    let (alice, mallory) = (web.viewer("alice"), web.viewer("mallory"));
    let mut client = web.client("127.0.0.1");
    let answer = sign_in(&mut client, &alice, "/");
    assert_eq!(answer.status, 303, "{}", answer.body);
    let alice_session = session_cookie(&answer);
    assert!(signed_in(&mut client, &alice_session));

    let started = Instant::now();
    let first = session_cookie(&sign_in(&mut client, &mallory, "/"));
    let mut last = first.clone();
    for _ in 0..10_050 {
        let answer = sign_in(&mut client, &mallory, "/");
        assert_eq!(answer.status, 303, "{}", answer.body);
        last = session_cookie(&answer);
    }
    eprintln!("10,051 sign-ins in {:?}", started.elapsed());
    assert!(signed_in(&mut client, &alice_session), "mallory's sign-ins signed alice out");
    assert!(signed_in(&mut client, &last), "the newest sign-in holds");
    assert!(!signed_in(&mut client, &first), "mallory's own oldest session made room");
}

/// Failed sign-ins were never throttled. After five failures within a minute an
/// address is answered 429 with Retry-After for a minute — whatever it sends, a valid
/// credential too — while other addresses sign in as usual; the block is audited.
#[test]
fn failed_sign_ins_are_throttled_per_address() {
    let web = WebFleet::start();
    let viewer = web.viewer("dashboards");
    let wrong = format!("{}x", &viewer[..viewer.len() - 1]);
    let mut guesser = web.client("127.0.0.2");
    for attempt in 0..6 {
        let answer = sign_in(&mut guesser, &wrong, "/");
        assert_eq!(answer.status, 401, "attempt {attempt}: {}", answer.head);
        assert!(answer.header("set-cookie").is_none());
    }
    let throttled = sign_in(&mut guesser, &wrong, "/");
    assert_eq!(throttled.status, 429, "{}", throttled.head);
    let wait: u64 = throttled.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "Retry-After: {wait}");
    assert!(throttled.body.contains("Too many failed sign-ins"), "{}", throttled.body);
    let valid_but_blocked = sign_in(&mut guesser, &viewer, "/");
    assert_eq!(valid_but_blocked.status, 429, "a blocked address is not looked at");
    assert!(valid_but_blocked.header("set-cookie").is_none());

    let mut other = web.client("127.0.0.1");
    let answer = sign_in(&mut other, &viewer, "/");
    assert_eq!(answer.status, 303, "another address signs in: {}", answer.head);

    let audit: Vec<Value> =
        serde_json::from_str(&web.controller.cli(&["audit", "-o", "json"]).success()).unwrap();
    let blocks: Vec<&Value> =
        audit.iter().filter(|event| event["action"] == "web.sign-in.throttled").collect();
    assert_eq!(blocks.len(), 1, "{audit:?}");
    assert_eq!(blocks[0]["actor"], "web sign-in from 127.0.0.2");
}

/// `next=` let a tab through into Location (`/%09/host` became `/\t/host`) and a line
/// feed answered 500 after a session was made. Only a plain absolute path is followed
/// now; anything else goes to `/`, with the sign-in done.
#[test]
fn sign_in_goes_only_to_a_plain_path_on_this_site() {
    let web = WebFleet::start();
    let viewer = web.viewer("dashboards");
    for (next, expected) in [
        ("/machines?where=gpu.compute%20%3E%3D%208.0", "/machines?where=gpu.compute%20%3E%3D%208.0"),
        ("/\t/evil.example", "/"),
        ("/\n/", "/"),
        ("/\r\nSet-Cookie: stolen=1", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("/ /evil.example", "/"),
        ("javascript:alert(1)", "/"),
    ] {
        // A connection each: a failure on one must not hide the next.
        let mut client = web.client("127.0.0.1");
        let answer = sign_in(&mut client, &viewer, next);
        assert_eq!(answer.status, 303, "next={next:?}: {}", answer.head);
        assert_eq!(answer.header("location"), Some(expected), "next={next:?}: {}", answer.head);
        assert!(!answer.head.contains("stolen"), "{}", answer.head);
        assert!(signed_in(&mut client, &session_cookie(&answer)));
    }
    // The sign-in page carries only a safe next, too.
    let mut client = web.client("127.0.0.1");
    let page = client.send("GET", "/login?next=%2F%0A%2F", &[], "");
    assert_eq!(page.status, 200, "{}", page.head);
    assert!(page.body.contains(r#"name="next" value="/""#), "{}", page.body);
}

/// A forged log line: what follows the line feed, as the controller would log it.
const FORGED: &str = "2026-12-07T00:00:00.000000Z  INFO comfyfleet_controller::state: audit: admin credential created name=mallory";

/// An enrolled agent wrote whole lines into the controller's log: refused label values
/// and report errors were logged raw, line feeds and escape codes included. They are
/// logged escaped now — on one line, the escape code as `\u{1b}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_write_lines_into_the_controllers_log() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let token = controller.create_token(&[]);
    let mut agent =
        Agent::start(dir.path(), "mallory", &profile("t4-x1-535"), &controller.url, Some(&token), &[]);
    wait_until(Duration::from_secs(30), "mallory online", || {
        (controller.machine("mallory")?["online"] == true).then_some(())
    });
    agent.process.kill();
    let files = AgentFiles::read(&agent.data_dir);

    // A label value with a line of its own and an escape code, in the Hello.
    let mut forged_hello = hello(&files.machine_id, Some(inventory("mallory", 1)));
    if let Some(pb::agent_message::Body::Hello(hello)) = forged_hello.body.as_mut() {
        hello.labels.insert("pool".to_owned(), format!("render\n{FORGED}\u{1b}[31m"));
    }
    let mut session =
        RawSession::open(channel(&controller.url, &files.ca_pem, Some(&files)).await).await.unwrap();
    session.send(forged_hello).await;
    let refused = session.next().await.unwrap_err();
    assert!(refused.message().contains("label value"), "{}", refused.message());
    assert!(
        !refused.message().contains('\n') && !refused.message().contains('\u{1b}'),
        "{}",
        refused.message()
    );

    // A report whose error holds a line of its own (line feeds are allowed there). The
    // machine has no assignment, so only an idle report (generation 0) is stored.
    let mut session =
        RawSession::open(channel(&controller.url, &files.ca_pem, Some(&files)).await).await.unwrap();
    session.send(hello(&files.machine_id, Some(inventory("mallory", 1)))).await;
    assert!(matches!(
        session.next().await.unwrap().unwrap().body,
        Some(pb::controller_message::Body::Welcome(_))
    ));
    let report = pb::ConvergenceReport {
        generation: 0,
        phase: pb::ConvergencePhase::Idle.into(),
        error: format!("torch failed\n{FORGED}"),
        updated_at: Some(comfyfleet_proto::timestamp_to_wire(jiff::Timestamp::now())),
        ..Default::default()
    };
    session.send(pb::AgentMessage { seq: 2, body: Some(pb::agent_message::Body::Report(report)) }).await;
    loop {
        match session.next().await.unwrap().unwrap().body {
            Some(pb::controller_message::Body::Ack(ack)) if ack.seq == 2 => break,
            _ => {}
        }
    }
    drop(session);

    let log = wait_until(Duration::from_secs(10), "both attempts in the controller's log", || {
        let log = controller.process.log();
        (log.contains("session refused") && log.contains("convergence report")).then_some(log)
    });
    assert!(!log.contains('\u{1b}'), "an escape code reached the log:\n{log}");
    for line in log.lines() {
        assert!(!line.starts_with(FORGED), "a forged line:\n{line}");
    }
    let refused = log.lines().find(|line| line.contains("session refused")).unwrap();
    assert!(refused.contains(&format!("render\\n{FORGED}\\u{{1b}}[31m")), "{refused}");
    let reported = log.lines().find(|line| line.contains("convergence report")).unwrap();
    assert!(reported.contains(&format!("torch failed\\n{FORGED}")), "{reported}");
}
