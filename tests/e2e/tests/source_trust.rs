//! The controller holds the fleet's CA key and every stored secret: no code from a
//! package or a repository runs on it, its children see none of its environment, and
//! a secret goes only to the origins its admin bound it to. Each test failed before
//! its fix (issue 23, points 1 and 2).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)] // test helpers fail loudly by design

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use comfyfleet_e2e::git::GitRepo;
use comfyfleet_e2e::provision::Fleet;
use comfyfleet_e2e::standin::sdist::publish_source_only;
use comfyfleet_e2e::standin::{CatalogOptions, StandinWorld, TestNode, system_python};
use comfyfleet_e2e::{CliOutput, Controller, binaries, cli, test_dir, wait_until};
use serde_json::Value;

/// `comfyfleet secrets set NAME --username USER ARGS…` with the secret on stdin.
fn set_secret(config: &Path, name: &str, secret: &str, args: &[&str]) -> CliOutput {
    let mut child = std::process::Command::new(&binaries().cli)
        .args(["--config", config.to_str().unwrap(), "secrets", "set", name, "--username", "builder"])
        .args(args)
        .env_remove("COMFYFLEET_CONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A call refused before it reads stdin closes it: that is not this helper's failure.
    let _ = child.stdin.take().unwrap().write_all(format!("{secret}\n").as_bytes());
    let output = child.wait_with_output().unwrap();
    CliOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The audit log, newest first.
fn audit(controller: &Controller) -> Vec<Value> {
    serde_json::from_str(&controller.cli(&["audit", "-o", "json"]).success()).unwrap()
}

/// A custom node whose requirements.txt names a package on PyPI published only as
/// a source distribution (whose backend would write a file): apply is refused, naming
/// the package and how to provide a wheel, the backend never ran on the controller,
/// and the refusal is in the audit log.
#[test]
fn a_source_only_package_is_refused_at_apply_and_its_build_backend_never_runs() {
    let fleet = Fleet::start();
    let marker = fleet.dir.path().join("build-backend-ran");
    let package = publish_source_only(&fleet.world.catalog.root, "evil-sdist", "1.0", &marker);
    let node = GitRepo::create(
        &fleet.dir.path().join("repos/ComfyUI-Innocent"),
        &[("__init__.py", "NODE_CLASS_MAPPINGS = {}\n"), ("requirements.txt", "numpy\nevil-sdist\n")],
    );
    let spec = fleet.spec(|options| options.custom_nodes.push(TestNode::new(&node.url(), "main")));
    let path = fleet.dir.path().join("innocent.toml");
    std::fs::write(&path, spec).unwrap();

    let refused = fleet.cli(&["apply", "-f", path.to_str().unwrap()]).failure();
    assert!(!marker.exists(), "the package's build backend ran on the controller:\n{refused}");
    assert!(
        refused.contains(&format!("{} is published only as a source distribution", package.name)),
        "{refused}"
    );
    assert!(refused.contains("the controller never builds a package"), "{refused}");
    assert!(refused.contains("host it on the spec's index"), "{refused}");
    assert!(
        fleet.world.server.requests_matching("/files/evil_sdist-1.0.tar.gz") == 0,
        "the sdist was not even fetched"
    );

    let entries = audit(&fleet.controller);
    let entry = entries
        .iter()
        .find(|entry| entry["action"] == "environment.apply.refused")
        .unwrap_or_else(|| panic!("no refused apply in the audit log: {entries:#?}"));
    assert_eq!(entry["target"], "render-prod");
    assert!(entry["actor"].as_str().unwrap().starts_with("admin"), "{entry}");
    let detail = entry["detail"].as_str().unwrap();
    assert!(detail.contains("innocent.toml") && detail.contains("evil-sdist"), "{detail}");
    assert!(!detail.contains('\n'), "{detail}");
}

/// What a listener on another port was sent: each request's head.
fn recording_listener() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let recorded = heads.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            recorded.lock().unwrap().push(head);
            let mut stream = stream;
            let _ =
                stream.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (port, heads)
}

/// An admin stores `farm-mirror` for the stand-in index's origin. An operator's spec
/// naming it for an index on another origin (their own server) is refused before
/// anything is asked of any source, that server never hears from the controller, and
/// the audit log says who tried, with which spec and credential, and why.
#[test]
fn an_operator_cannot_send_an_admins_secret_to_another_origin() {
    const SECRET: &str = "Vb3-admin-only-secret-9qT";
    let fleet = Fleet::start();
    let admin = fleet.controller.admin_config();
    let origin = fleet.base_url();

    // Origins are required, exact, and shown.
    let unbound = set_secret(&admin, "farm-mirror", SECRET, &[]).failure();
    assert!(unbound.contains("--origin"), "{unbound}");
    let wildcard =
        set_secret(&admin, "farm-mirror", SECRET, &["--origin", "http://*.farm.internal"]).failure();
    assert!(wildcard.contains("has a wildcard"), "{wildcard}");
    let stored = set_secret(&admin, "farm-mirror", SECRET, &["--origin", &format!("{origin}/")]).success();
    assert!(stored.contains(&format!("sent only to {origin}")), "{stored}");
    let listed: Vec<Value> =
        serde_json::from_str(&fleet.cli(&["secrets", "list", "-o", "json"]).success()).unwrap();
    assert_eq!(listed[0]["origins"], serde_json::json!([origin]));

    let operator_toml = fleet.cli(&["credentials", "create", "mallory", "--role", "operator"]).success();
    let operator = fleet.dir.path().join("operator.toml");
    std::fs::write(&operator, operator_toml).unwrap();

    let (port, heads) = recording_listener();
    let theirs = format!("http://127.0.0.1:{port}");
    let spec = fleet.spec(|_| {}).replace(
        &format!("url = \"{origin}/simple\""),
        &format!("url = \"{theirs}/simple\"\ncredential = \"farm-mirror\""),
    );
    assert!(spec.contains(&format!("{theirs}/simple")), "{spec}");
    let path = fleet.dir.path().join("exfiltrate.toml");
    std::fs::write(&path, &spec).unwrap();
    let refused = cli(&operator, &["apply", "-f", path.to_str().unwrap()]).failure();
    assert!(
        refused.contains(&format!(
            "index.credential: credential \"farm-mirror\" may be sent only to {origin}, not to {theirs}"
        )),
        "{refused}"
    );
    // Give a late request the time to arrive before saying none did.
    std::thread::sleep(Duration::from_millis(500));
    let heads = heads.lock().unwrap().clone();
    assert!(heads.is_empty(), "the operator's server heard from the controller: {heads:?}");
    assert!(!refused.contains(SECRET));

    let entries = audit(&fleet.controller);
    let entry = entries
        .iter()
        .find(|entry| entry["action"] == "environment.apply.refused")
        .unwrap_or_else(|| panic!("no refused apply in the audit log: {entries:#?}"));
    assert!(entry["actor"].as_str().unwrap().contains("mallory"), "{entry}");
    assert_eq!(entry["target"], "render-prod");
    let detail = entry["detail"].as_str().unwrap();
    assert!(detail.contains("exfiltrate.toml"), "{detail}");
    assert!(detail.contains("credentials farm-mirror"), "{detail}");
    assert!(detail.contains(&format!("may be sent only to {origin}, not to {theirs}")), "{detail}");
    let everything = fleet.cli(&["audit", "-o", "json"]).success();
    assert!(!everything.contains(SECRET), "{everything}");

    // Named for its own origin, the same operator's apply goes through.
    let allowed = fleet.spec(|_| {}).replace(
        &format!("url = \"{origin}/simple\""),
        &format!("url = \"{origin}/simple\"\ncredential = \"farm-mirror\""),
    );
    let path = fleet.dir.path().join("allowed.toml");
    std::fs::write(&path, &allowed).unwrap();
    let applied = cli(&operator, &["apply", "-f", path.to_str().unwrap()]).success();
    assert!(applied.contains("render-prod"), "{applied}");
}

/// The state letter of /proc/PID/stat; `None` once the process is gone.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// The controller's git and uv start from the daemons' allow-list, not from the
/// controller's environment (a variable it was started with never reaches them), and
/// a uv still resolving when the controller is killed dies with it.
#[test]
fn the_controllers_git_and_uv_see_only_the_allow_list_and_die_with_it() {
    const PROBE: &str = "COMFYFLEET_SECRET_PROBE";
    let dir = test_dir();
    let world =
        StandinWorld::create(&dir.path().join("standin"), &CatalogOptions::new(&system_python().tag), 0);
    let shims = dir.path().join("shims");
    std::fs::create_dir_all(&shims).unwrap();
    let real_git = String::from_utf8(
        std::process::Command::new("sh").args(["-c", "command -v git"]).output().unwrap().stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let dumps = dir.path().join("dumps");
    std::fs::create_dir_all(&dumps).unwrap();
    let write_shim = |name: &str, body: String| {
        let shim = shims.join(name);
        std::fs::write(&shim, body).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        shim
    };
    write_shim(
        "git",
        format!("#!/bin/sh\nenv > '{}/git.$$.env'\nexec '{real_git}' \"$@\"\n", dumps.display()),
    );
    // uv records what it was given, then resolves forever (exec: same process).
    let uv = write_shim(
        "uv",
        format!(
            "#!/bin/sh\nenv > '{0}/uv.env'\necho $$ > '{0}/uv.pid.partial'\n\
             mv '{0}/uv.pid.partial' '{0}/uv.pid'\nexec sleep 600\n",
            dumps.display()
        ),
    );
    let path = format!("{}:{}", shims.display(), std::env::var("PATH").unwrap_or_default());
    let mut controller = Controller::start_with_env(
        &dir.path().join("controller"),
        0,
        &[
            "--git-allow-file",
            "--source-allow-host",
            "127.0.0.1",
            "--source-allow-host",
            "*.example",
            "--uv",
            uv.to_str().unwrap(),
        ],
        &[("PATH", path.as_str()), (PROBE, "the-controllers-own-secret")],
    );
    let admin = controller.admin_config();
    let spec = world.manifest.spec.clone();
    let applying = std::thread::spawn(move || cli(&admin, &["apply", "-f", spec.to_str().unwrap()]));

    let pid: u32 = wait_until(Duration::from_secs(120), "the controller to start uv", || {
        std::fs::read_to_string(dumps.join("uv.pid")).ok()?.trim().parse().ok()
    });
    let mut seen = vec![std::fs::read_to_string(dumps.join("uv.env")).unwrap()];
    for entry in std::fs::read_dir(&dumps).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("git.") {
            seen.push(std::fs::read_to_string(entry.path()).unwrap());
        }
    }
    assert!(seen.len() >= 2, "git ran before uv: {seen:?}");
    for env in &seen {
        assert!(env.contains("PATH="), "{env}");
        assert!(!env.contains(PROBE), "a child of the controller saw its environment:\n{env}");
        assert!(!env.contains("COMFYFLEET_"), "a child saw a COMFYFLEET_ variable:\n{env}");
    }
    assert!(process_state(pid).is_some_and(|state| state != 'Z'), "uv runs");

    controller.kill();
    wait_until(Duration::from_secs(30), "uv to die with the controller", || {
        process_state(pid).is_none_or(|state| state == 'Z').then_some(())
    });
    let output = applying.join().unwrap();
    assert!(!output.status.success());
}
