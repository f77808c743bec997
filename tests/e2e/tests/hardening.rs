//! What an attacker found, fixed. Each test here failed before its fix.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)] // test helpers fail loudly by design

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use comfyfleet_e2e::{Controller, test_dir};
use comfyfleet_proto::v1 as pb;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt;

/// Connections that complete TLS (ALPN h2) and then never send the HTTP/2 preface
/// used to be held forever: enough of them froze the controller. Now an address holds
/// at most its cap (the rest are closed at accept), the silent ones are closed ten
/// seconds after their handshake, and the CLI, from another address, answers at once
/// throughout.
#[test]
fn connections_that_never_speak_are_capped_and_closed_and_the_cli_still_answers() {
    let dir = test_dir();
    let controller =
        Controller::start_with(&dir.path().join("controller"), 0, &["--max-connections-per-address", "300"]);
    let admin: toml::Value =
        toml::from_str(&std::fs::read_to_string(controller.admin_config()).unwrap()).unwrap();
    let ca = CertificateDer::from_pem_slice(admin["ca_certificate"].as_str().unwrap().as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let server: SocketAddr = format!("127.0.0.1:{}", controller.port).parse().unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        // 400 silent connections from another loopback address.
        let started = Instant::now();
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..400 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            let Ok(tcp) = socket.connect(server).await else {
                refused += 1;
                continue;
            };
            let name = ServerName::try_from("localhost").unwrap();
            match tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp)).await {
                Ok(Ok(tls)) => {
                    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                    held.push(tls);
                }
                _ => refused += 1,
            }
        }
        eprintln!("{} silent connections held, {refused} refused, in {:?}", held.len(), started.elapsed());
        assert!(held.len() <= 300, "the cap holds: {} held", held.len());
        assert!(refused >= 100, "past the cap, connections are closed: {refused} refused");

        // The CLI answers, from 127.0.0.1, in its normal time.
        let asked = Instant::now();
        let whoami = tokio::task::spawn_blocking({
            let config = controller.admin_config();
            move || comfyfleet_e2e::cli(&config, &["whoami"])
        })
        .await
        .unwrap();
        let took = asked.elapsed();
        assert!(whoami.status.success(), "{}", whoami.stderr);
        assert!(took < Duration::from_secs(5), "whoami took {took:?}");

        // Every silent connection is closed by the controller, about 10 s after its handshake.
        let mut buffer = [0u8; 64];
        for (index, mut tls) in held.into_iter().enumerate() {
            let read = tokio::time::timeout(Duration::from_secs(20), tls.read(&mut buffer)).await;
            assert!(matches!(read, Ok(Ok(0) | Err(_))), "silent connection {index} still open: {read:?}");
        }
        let closed = started.elapsed();
        assert!(
            closed > Duration::from_secs(9),
            "closed after {closed:?}: too early to be the first-bytes deadline"
        );

        // The address may connect again once its connections are gone.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let tcp = socket.connect(server).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await.expect("a new connection after the old ones closed");
    });
}

/// A machine enrolled with a token labelled `pool=quarantine` used to report
/// `pool=prod` itself and get prod's environment. Labels a token sets are binding: an
/// agent may add labels, but one that changes a key its token set is refused with the
/// reason, at enrollment and at every session; `machines show` says who set each label.
#[test]
fn labels_a_join_token_sets_are_binding_on_the_agent() {
    use comfyfleet_e2e::{Agent, profile, wait_until};
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let token = controller.create_token(&["--uses", "3", "--label", "pool=quarantine"]);
    let gpu = profile("l40s-x2-550");

    let mut liar =
        Agent::start(dir.path(), "liar", &gpu, &controller.url, Some(&token), &["--label", "pool=prod"]);
    let (status, log) = liar.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(log.contains("this machine's join token sets pool=quarantine"), "{log}");
    assert!(controller.machine("liar").is_none(), "nothing enrolled");

    let honest =
        Agent::start(dir.path(), "honest", &gpu, &controller.url, Some(&token), &["--label", "rack=r1"]);
    let machine = wait_until(Duration::from_secs(20), "honest", || controller.machine("honest"));
    assert_eq!(machine["labels"], serde_json::json!({"pool": "quarantine", "rack": "r1"}));
    assert_eq!(machine["label_sources"], serde_json::json!({"pool": "token", "rack": "agent"}));
    let id = machine["id"].as_str().unwrap().to_owned();
    controller.cli(&["machines", "label", &id, "tier=gold"]).success();
    let shown = controller.cli(&["machines", "show", &id]).success();
    assert!(shown.contains("pool=quarantine (token), rack=r1 (agent), tier=gold (operator)"), "{shown}");

    // The same machine restarted claiming prod: its session is refused, it stays quarantined.
    drop(honest);
    let mut turned =
        Agent::start(dir.path(), "honest", &gpu, &controller.url, None, &["--label", "pool=prod"]);
    let (status, log) = turned.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(log.contains("a label its token sets is binding"), "{log}");
    let machine = controller.machine("honest").unwrap();
    assert_eq!(machine["labels"]["pool"], "quarantine");
}

/// Hostnames with a bidirectional override, a zero-width character or a line
/// separator used to be accepted and printed raw; CSV output handed spreadsheets
/// cells beginning with `=`. Now such names are refused with the character named, and
/// CSV cells that would run as formulas are quoted.
#[test]
fn names_that_print_as_something_else_are_refused_and_csv_runs_no_formula() {
    use comfyfleet_e2e::{Agent, profile, wait_until};
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let token = controller.create_token(&["--uses", "10"]);
    let gpu = profile("l40s-x2-550");
    for (sneaky, what) in [
        ("render-01\u{202E}gnp", "U+202E (a bidirectional text control)"),
        ("render\u{200B}-01", "U+200B (an invisible character)"),
        ("render\u{200D}-01", "U+200D (an invisible character)"),
        ("render-01\u{2028}render-02", "U+2028 (a line separator)"),
    ] {
        // The harness names the agent's host (--hostname-override) after it.
        let mut agent = Agent::start(dir.path(), sneaky, &gpu, &controller.url, Some(&token), &[]);
        let (status, log) = agent.wait_exit(Duration::from_secs(30));
        assert_eq!(status.code(), Some(3), "{sneaky:?}: {log}");
        assert!(log.contains(what), "{sneaky:?}: {log}");
    }
    assert!(controller.machines().is_empty(), "none enrolled");
    for label in ["pool=a\u{202E}b", "po\u{200B}ol=a"] {
        let error = controller.cli(&["token", "create", "--label", label]).failure();
        assert!(error.contains("label"), "{error}");
    }
    let error = controller.cli(&["token", "create", "--description", "rack 12\u{2028}admin: yes"]).failure();
    assert!(error.contains("U+2028"), "{error}");

    let _formula = Agent::start(dir.path(), "=SUM(A1+A2)", &gpu, &controller.url, Some(&token), &[]);
    wait_until(Duration::from_secs(20), "the machine named like a formula", || {
        controller.machine("=SUM(A1+A2)")
    });
    let csv = controller.cli(&["machines", "-o", "csv"]).success();
    assert!(csv.contains("'=SUM(A1+A2)"), "{csv}");
    assert!(
        !csv.lines().skip(1).any(|line| line.split(',').any(|cell| cell.starts_with(['=', '+', '-', '@']))),
        "{csv}"
    );
    let report = controller.cli(&["report", "gpus", "-o", "csv"]).success();
    assert!(
        !report.lines().any(|line| line.split(',').any(|cell| cell.starts_with(['=', '+', '@']))),
        "{report}"
    );
}

async fn enroll(
    controller: &Controller,
    token: &str,
    csr_pem: &str,
) -> Result<pb::EnrollResponse, tonic::Status> {
    let ca = comfyfleet_e2e::grpc::controller_ca(&controller.data_dir);
    let anonymous = comfyfleet_e2e::grpc::channel(&controller.url, &ca, None).await;
    pb::agent_service_client::AgentServiceClient::new(anonymous)
        .enroll(pb::EnrollRequest {
            join_token: token.to_owned(),
            csr_pem: csr_pem.to_owned(),
            hostname: "probe".into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Enrollment used to parse and check the CSR before the token, to say whether a
/// token id exists, to audit no refusal and to take any number of guesses. Now the
/// token comes first, an unknown id and a wrong secret get the same answer, refusals
/// are audited, an address that keeps failing is refused for a while (even with a
/// good token), and a CSR with a key the controller cannot sign says which keys it
/// takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_checks_the_token_first_answers_guesses_alike_audits_and_throttles() {
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let token: comfyfleet_config::join_token::JoinToken = controller.create_token(&[]).parse().unwrap();
    let unknown =
        comfyfleet_config::join_token::JoinToken::new("0123456789ab", token.secret(), token.ca_sha256())
            .unwrap();
    let wrong_secret = comfyfleet_config::join_token::JoinToken::new(
        token.id(),
        &"f".repeat(token.secret().len()),
        token.ca_sha256(),
    )
    .unwrap();

    // The token before the CSR, and the same words whether or not the id exists.
    let first = enroll(&controller, &unknown.to_string(), "not a csr").await.unwrap_err();
    let second = enroll(&controller, &wrong_secret.to_string(), "not a csr").await.unwrap_err();
    assert_eq!(first.code(), tonic::Code::PermissionDenied, "{first:?}");
    assert_eq!((first.code(), first.message()), (second.code(), second.message()));
    assert!(!first.message().contains("0123456789ab") && !first.message().contains(token.id()), "{first:?}");

    // A key the controller cannot sign for, named, with the keys it takes.
    let key = dir.path().join("p521.key");
    let csr = dir.path().join("p521.csr");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-521",
            "-nodes",
            "-subj",
            "/CN=probe",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let refused =
        enroll(&controller, &token.to_string(), &std::fs::read_to_string(&csr).unwrap()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("ECDSA P-521") && refused.message().contains("ECDSA P-256"),
        "{refused:?}"
    );

    // Three more failures: the address is refused for a while, a good token too.
    for _ in 0..3 {
        enroll(&controller, &unknown.to_string(), "not a csr").await.unwrap_err();
    }
    let identity = comfyfleet_agent::identity::IdentityDir::new(&dir.path().join("good"));
    std::fs::create_dir_all(dir.path().join("good/identity")).unwrap();
    let good_csr = comfyfleet_agent::identity::certificate_request(&identity.key().unwrap(), "good").unwrap();
    let throttled = enroll(&controller, &token.to_string(), &good_csr).await.unwrap_err();
    assert_eq!(throttled.code(), tonic::Code::ResourceExhausted, "{throttled:?}");
    assert!(throttled.message().contains("too many failed enrollments from 127.0.0.1"), "{throttled:?}");

    let audit = controller.cli(&["audit", "-o", "json"]).success();
    assert_eq!(audit.matches("machine.enroll.refused").count(), 6, "{audit}");
    assert_eq!(audit.matches("machine.enroll.throttled").count(), 1, "{audit}");
    assert!(audit.contains("enrollment from 127.0.0.1"), "{audit}");
    assert!(!audit.contains(token.secret()), "no secret in the audit log");
    let tokens = controller.cli(&["token", "list", "-o", "json"]).success();
    assert!(tokens.contains("\"uses\":0") || tokens.contains("\"uses\": 0"), "{tokens}");
    assert!(controller.machines_with(&["--all"]).is_empty());
}

/// An audit entry used to be written after the change it records, so a controller
/// killed in between left a token nobody audited. Now each is written in the change's
/// own transaction: with the audit log refusing writes (a trigger stands in for the
/// crash between the two), the change is refused too and nothing is left half done.
#[test]
fn a_change_and_its_audit_entry_are_stored_together_or_not_at_all() {
    use comfyfleet_e2e::{Agent, profile, wait_until};
    let dir = test_dir();
    let data = dir.path().join("controller");
    let mut controller = Controller::start(&data);
    let token = controller.create_token(&["--uses", "2"]);
    let _agent =
        Agent::start(dir.path(), "render-01", &profile("l40s-x2-550"), &controller.url, Some(&token), &[]);
    let machine = wait_until(Duration::from_secs(20), "render-01", || controller.machine("render-01"));
    let id = machine["id"].as_str().unwrap().to_owned();
    let port = controller.port;
    controller.kill();

    let sqlite = |statement: &str| {
        let script = "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.executescript(sys.argv[2])\nc.commit()\n";
        let done = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(data.join("controller.db"))
            .arg(statement)
            .output()
            .unwrap();
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    };
    sqlite(
        "CREATE TRIGGER no_audit BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'the audit log refuses writes'); END;",
    );
    let controller = Controller::start_with(&data, port, &[]);
    let tokens_before = controller.cli(&["token", "list", "-o", "json"]).success();
    let failed = controller.cli(&["token", "create"]).failure();
    assert!(failed.contains("audit"), "{failed}");
    assert_eq!(
        controller.cli(&["token", "list", "-o", "json"]).success(),
        tokens_before,
        "no unaudited token"
    );
    let failed = controller.cli(&["machines", "label", &id, "rack=12"]).failure();
    assert!(failed.contains("audit"), "{failed}");
    assert!(controller.machine("render-01").unwrap()["labels"].get("rack").is_none(), "no unaudited label");
    let failed = controller.cli(&["credentials", "create", "ci", "--role", "viewer"]).failure();
    assert!(failed.contains("audit"), "{failed}");
    let credentials = controller.cli(&["credentials", "list", "-o", "json"]).success();
    assert!(!credentials.contains("\"ci\""), "no unaudited credential: {credentials}");
    let failed = controller.cli(&["machines", "revoke", &id]).failure();
    assert!(failed.contains("audit"), "{failed}");
    assert!(controller.machine("render-01").unwrap()["revoked_at"].is_null(), "no unaudited revocation");

    // The audit log back: each change and its entry, together.
    sqlite("DROP TRIGGER no_audit;");
    controller.cli(&["machines", "label", &id, "rack=12"]).success();
    controller.create_token(&[]);
    let audit = controller.cli(&["audit", "-o", "json"]).success();
    assert_eq!(audit.matches("machine.label").count(), 1, "{audit}");
    assert_eq!(audit.matches("token.create").count(), 2, "{audit}");
    assert_eq!(audit.matches("machine.enroll").count(), 1, "{audit}");
}

/// `apply` used to run `git ls-remote` on whatever a spec named, so an operator could
/// learn which paths exist on the controller's host and which of its ports answer.
/// Now local paths need --git-allow-file and a host on a local address needs naming
/// with --source-allow-host (or its old name, --git-allow-host); nothing is asked of a
/// refused remote, so an open port and a closed one, an existing path and a missing
/// one, are refused in the same words.
#[test]
fn apply_reads_git_only_from_remotes_the_controller_allows() {
    let dir = test_dir();
    // The spec's index is the stand-in on 127.0.0.1; `localhost` is another name.
    let controller = Controller::start_with(
        &dir.path().join("controller"),
        0,
        &["--git-allow-host", "git.farm.internal", "--source-allow-host", "127.0.0.1"],
    );
    let base = comfyfleet_e2e::rollouts::spec('1', "");
    let with_git = |url: &str| {
        base.lines()
            .map(|line| if line.starts_with("git = ") { format!("git = \"{url}\"") } else { line.to_owned() })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let refusal = |url: &str| {
        let path = dir.path().join("probe.toml");
        std::fs::write(&path, with_git(url)).unwrap();
        let error = controller.cli(&["apply", "-f", path.to_str().unwrap()]).failure();
        error.replace(url, "URL")
    };
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let existing = refusal("file:///etc");
    assert!(existing.contains("--git-allow-file"), "{existing}");
    assert!(!existing.contains("does not appear to be a git repository"), "{existing}");
    assert_eq!(existing, refusal("file:///no/such/dir"), "a path that exists reads as one that does not");
    let open = refusal(&format!("https://localhost:{}/x", controller.port));
    assert!(open.contains("--source-allow-host localhost"), "{open}");
    assert_eq!(
        open.replace(&controller.port.to_string(), "PORT"),
        refusal(&format!("https://localhost:{closed}/x")).replace(&closed.to_string(), "PORT"),
        "an open port reads as a closed one"
    );
    refusal("ext::sh -c id");
    let environments = controller.cli(&["env", "list", "-o", "json"]).success();
    assert!(!environments.contains("render"), "nothing stored: {environments}");
}

/// A deleted `identity/` directory used to go unnoticed until the agent restarted and
/// could not reconnect. Now the agent says so within seconds, in its log and to the
/// controller, which shows it on the machine.
#[test]
fn an_agent_whose_identity_files_go_says_so_at_once() {
    use comfyfleet_e2e::{Agent, profile, wait_until};
    let dir = test_dir();
    let controller = Controller::start(&dir.path().join("controller"));
    let token = controller.create_token(&[]);
    let agent =
        Agent::start(dir.path(), "render-01", &profile("l40s-x2-550"), &controller.url, Some(&token), &[]);
    wait_until(Duration::from_secs(20), "render-01 online", || {
        controller.machine("render-01").filter(|machine| machine["online"] == true)
    });
    let identity = agent.data_dir.join("identity");
    let saved = dir.path().join("identity-backup");
    std::fs::rename(&identity, &saved).unwrap();
    let gone = Instant::now();
    let machine = wait_until(Duration::from_secs(20), "the controller to show the problem", || {
        controller
            .machine("render-01")
            .filter(|machine| machine["problems"].as_array().is_some_and(|p| !p.is_empty()))
    });
    eprintln!("reported after {:?}", gone.elapsed());
    assert!(machine["problems"][0].as_str().unwrap().contains("identity files gone"), "{machine}");
    assert_eq!(machine["online"], true, "the session goes on");
    assert!(agent.process.log().contains("identity files gone"), "{}", agent.process.log());
    let shown = controller.cli(&["machines", "show", "render-01"]);
    let id = machine["id"].as_str().unwrap();
    let shown = if shown.status.success() {
        shown.stdout
    } else {
        controller.cli(&["machines", "show", id]).success()
    };
    assert!(shown.contains("identity files gone"), "{shown}");

    // Put back, the problem clears.
    std::fs::rename(&saved, &identity).unwrap();
    wait_until(Duration::from_secs(20), "the problem to clear", || {
        controller
            .machine("render-01")
            .filter(|machine| machine.get("problems").is_none_or(|p| p.as_array().is_none_or(Vec::is_empty)))
    });
}

/// Every file under `root` whose bytes contain one of `needles`, as "path: needle".
fn files_containing(root: &std::path::Path, needles: &[&[u8]]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file()
                && let Ok(bytes) = std::fs::read(&path)
            {
                for needle in needles {
                    if bytes.windows(needle.len()).any(|window| window == *needle) {
                        hits.push(format!("{}: {}", path.display(), String::from_utf8_lossy(needle)));
                    }
                }
            }
        }
    }
    hits
}

/// Samples every process's command line while `running` is true: the ones holding
/// a needle, and how many distinct git and uv command lines were seen (so a sampler
/// that saw nothing cannot pass).
fn watch_command_lines(
    needles: Vec<Vec<u8>>,
    running: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(Vec<String>, usize)> {
    std::thread::spawn(move || {
        let mut hits = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        while running.load(std::sync::atomic::Ordering::SeqCst) {
            for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
                let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if needles
                    .iter()
                    .any(|needle| cmdline.windows(needle.len()).any(|window| window == needle.as_slice()))
                {
                    hits.push(text.clone());
                }
                if text.starts_with("git ") || text.contains("/uv pip") || text.starts_with("uv pip") {
                    seen.insert(text);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (hits, seen.len())
    })
}

/// A private index and git host: the spec names a credential the controller stores
/// (`secrets set`), URLs with credentials in them are refused, and the secret reaches
/// the controller's git, uv and package cache and an agent building without the
/// cache, yet no output, log, audit entry, stored file, environment file or command
/// line of any process holds it.
#[test]
fn a_spec_names_a_stored_credential_and_the_secret_shows_up_nowhere() {
    use comfyfleet_e2e::provision::{Fleet, current_target};
    use comfyfleet_e2e::standin::{CatalogOptions, system_python};

    const SECRET: &str = "Zq7-farm-mirror-secret-4kP";
    const USERNAME: &str = "builder";
    let fleet = Fleet::start_with_controller(
        &CatalogOptions::new(&system_python().tag),
        &["--git-allow-host", "127.0.0.1", "--git-allow-file"],
    );
    // ComfyUI over git's dumb HTTP from the same private host as the index.
    let served = fleet.world.server.root().join("git/ComfyUI.git");
    std::fs::create_dir_all(served.parent().unwrap()).unwrap();
    let run_git = |args: &[&str]| {
        let status = std::process::Command::new("git").args(args).status().unwrap();
        assert!(status.success(), "git {args:?}");
    };
    run_git(&[
        "clone",
        "--quiet",
        "--bare",
        fleet.world.repos.comfyui.repo.path.to_str().unwrap(),
        served.to_str().unwrap(),
    ]);
    run_git(&["--git-dir", served.to_str().unwrap(), "update-server-info"]);
    fleet.world.server.require_basic_auth(USERNAME, SECRET);
    let git_url = format!("{}/git/ComfyUI.git", fleet.base_url());
    let spec = fleet
        .spec(|options| options.comfyui_git = git_url.clone())
        .replace("trusted_hosts = [\"127.0.0.1\"]", "trusted_hosts = [\"127.0.0.1\"]\ncredential = \"farm\"")
        .replace("[comfyui]\n", "[comfyui]\ncredential = \"farm\"\n");
    assert!(
        spec.contains("credential = \"farm\"\n[comfyui]")
            || spec.matches("credential = \"farm\"").count() == 2
    );
    let spec_path = fleet.dir.path().join("private.toml");
    std::fs::write(&spec_path, &spec).unwrap();
    let mut outputs = Vec::new();

    // A URL carrying the secret is refused, and the refusal does not repeat it.
    let inline = fleet.spec(|options| {
        options.comfyui_git = git_url.replace("http://", &format!("http://{USERNAME}:{SECRET}@"));
    });
    let inline_path = fleet.dir.path().join("inline.toml");
    std::fs::write(&inline_path, &inline).unwrap();
    let refused = fleet.cli(&["apply", "-f", inline_path.to_str().unwrap()]);
    let text = refused.failure();
    assert!(text.contains("comfyfleet secrets set") && text.contains("***@127.0.0.1"), "{text}");
    outputs.push(text);

    // A credential the controller does not have: refused, saying how to store it.
    let missing = fleet.cli(&["apply", "-f", spec_path.to_str().unwrap()]).failure();
    assert!(missing.contains("\"farm\"") && missing.contains("secrets set"), "{missing}");
    assert_eq!(fleet.world.server.unauthorized_requests(), 0, "nothing was asked of the private host");

    // Stored from stdin (never an argument), replaced, listed without the secret.
    let set = |secret: &str| {
        let mut child = std::process::Command::new(&comfyfleet_e2e::binaries().cli)
            .args(["--config", fleet.controller.admin_config().to_str().unwrap()])
            .args(["secrets", "set", "farm", "--username", USERNAME, "--origin", &fleet.base_url()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(format!("{secret}\n").as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    outputs.push(set("an-old-value-first"));
    let replaced = set(SECRET);
    assert!(replaced.contains("replaced"), "{replaced}");
    outputs.push(replaced);

    let via_cache = fleet.agent("via-cache", "rtx4090-x1-570");
    let direct = fleet.agent_with("direct", "rtx4090-x1-570", &["--no-package-cache"], None);
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let encoded = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("{USERNAME}:{SECRET}"))
    };
    let needles: Vec<Vec<u8>> = vec![SECRET.as_bytes().to_vec(), encoded.as_bytes().to_vec()];
    let sampler = watch_command_lines(needles.clone(), running.clone());
    // The controller pins ComfyUI and locks through the private host.
    outputs.push(fleet.cli(&["apply", "-f", spec_path.to_str().unwrap()]).success());
    let git_before = fleet.world.server.requests_matching("/git/");
    let rolled = fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "5m"]).success();
    running.store(false, std::sync::atomic::Ordering::SeqCst);
    let (command_line_hits, seen) = sampler.join().unwrap();
    assert!(rolled.contains("succeeded: 2 active"), "{rolled}");
    assert!(current_target(&via_cache).is_some() && current_target(&direct).is_some());
    assert!(fleet.world.server.unauthorized_requests() > 0, "the host asked for the credential");
    assert!(seen >= 3, "the sampler saw git and uv run ({seen} command lines)");
    assert!(command_line_hits.is_empty(), "command lines with the secret: {command_line_hits:?}");
    // The agent on the cache got ComfyUI as the controller's bundle; the other fetched it.
    assert!(
        fleet.world.server.requests_matching("/git/") > git_before,
        "the direct agent fetched from the host"
    );

    // Deleting it while a spec names it is refused.
    let in_use = fleet.cli(&["secrets", "delete", "farm"]).failure();
    assert!(in_use.contains("render-prod@1") && in_use.contains("--force"), "{in_use}");
    outputs.push(in_use);

    for args in [
        &["secrets", "list"][..],
        &["secrets", "list", "-o", "json"],
        &["env", "show", "render-prod"],
        &["env", "show", "render-prod", "-o", "json"],
        &["machines", "-o", "json"],
        &["machines", "show", &fleet.machine_id("via-cache"), "-o", "json"],
        &["machines", "show", &fleet.machine_id("direct"), "-o", "json"],
        &["machines", "show", &fleet.machine_id("direct")],
        &["audit", "-o", "json"],
        &["rollout", "list"],
    ] {
        outputs.push(fleet.cli(args).success());
    }
    let listed = fleet.cli(&["secrets", "list", "-o", "json"]).success();
    assert!(listed.contains("\"username\": \"builder\"") && listed.contains("render-prod@1"), "{listed}");
    let audit = fleet.cli(&["audit", "-o", "json"]).success();
    assert!(audit.contains("secret.set") && audit.contains("replaced"), "{audit}");
    for output in &outputs {
        assert!(
            !output.contains(SECRET) && !output.contains(&encoded),
            "an output holds the secret:\n{output}"
        );
    }
    // Logs, the database, the controller's caches and copies, the agents' data dirs
    // (their environments, .git/config included, journals and caches).
    let needle_refs: Vec<&[u8]> = needles.iter().map(Vec::as_slice).collect();
    let hits = files_containing(fleet.dir.path(), &needle_refs);
    // (inline.toml is the refused spec this test wrote with the secret in it.)
    let hits: Vec<&String> = hits.iter().filter(|hit| !hit.contains("/inline.toml:")).collect();
    assert!(hits.is_empty(), "files holding the secret: {hits:?}");
    let config = std::fs::read_to_string(direct.data_dir.join("current/ComfyUI/.git/config")).unwrap();
    assert!(config.contains(&git_url), "the checkout names its origin without a secret: {config}");

    // Deleted anyway: a machine fetching directly then fails, saying which is missing.
    fleet.cli(&["secrets", "delete", "farm", "--force"]).success();
    let _late = fleet.agent_with("late", "rtx4090-x1-570", &["--no-package-cache"], None);
    let _ = fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "2m"]);
    let late = fleet.wait_for(&fleet.machine_id("late"), "the build to fail", |machine| {
        machine["report"]["phase"] == "failed"
    });
    let failure = late["report"].to_string();
    assert!(failure.contains("the controller sent no credential farm"), "{failure}");
}
