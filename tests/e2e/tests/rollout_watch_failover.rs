//! `rollout watch` and `rollout start --wait` follow a live rollout to its end: past
//! the death of the controller they read from (to another of the fleet's, from
//! `other_servers`), and through a moment without the database.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use comfyfleet_e2e::rollouts::{PROFILES, apply, spec, start, status, wait_for_state};
use comfyfleet_e2e::sim::{SimFleet, SimOptions};
use comfyfleet_e2e::{Controller, binaries, test_dir, wait_until};
use comfyfleet_testsupport::postgres::Server;

/// A `comfyfleet` run in the background, its output in `log`.
struct Running {
    child: Child,
    log: std::path::PathBuf,
}

impl Running {
    fn start(config: &Path, args: &[&str], log: &Path) -> Running {
        let file = std::fs::File::create(log).unwrap();
        let child = Command::new(&binaries().cli)
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("COMFYFLEET_CONFIG")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Running { child, log: log.to_owned() }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status, once it ends within `timeout`.
    fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "comfyfleet still runs after {timeout:?}:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes an admin config like `controller`'s, naming `server` first and `others` next.
fn config_naming(controller: &Controller, server: &str, others: &[&str], path: &Path) {
    let text = std::fs::read_to_string(controller.admin_config()).unwrap();
    let mut config: toml::Value = toml::from_str(&text).unwrap();
    config["server"] = toml::Value::String(server.to_owned());
    let others = others.iter().map(|url| toml::Value::String((*url).to_owned())).collect();
    config.as_table_mut().unwrap().insert("other_servers".into(), toml::Value::Array(others));
    std::fs::write(path, toml::to_string(&config).unwrap()).unwrap();
}

fn sim_options(count: usize) -> SimOptions {
    let mut options = SimOptions::new(count);
    options.profiles = PROFILES.iter().map(|name| (*name).to_owned()).collect();
    options.labels = vec!["pool=sim".to_owned()];
    // Slow enough that the rollout is still running when the trouble starts.
    options.activate = Duration::from_millis(1_500);
    options
}

fn postgres_args(dir: &Path, url: &str) -> Vec<String> {
    let key = dir.join("secrets.key");
    if !key.exists() {
        std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
    }
    vec!["--database-url".into(), url.into(), "--secrets-key-file".into(), key.to_str().unwrap().into()]
}

#[test]
fn a_watch_moves_to_another_controller_when_its_own_dies() {
    let dir = test_dir();
    let postgres = Server::start();
    let url = postgres.create_database("fleet");
    let args = postgres_args(dir.path(), &url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut watched = Controller::start_with(&dir.path().join("controller-a"), 0, &args);
    let other = Controller::start_with(&dir.path().join("controller-b"), 0, &args);
    let urls = format!("{},{}", watched.url, other.url);
    let token = other.create_token(&["--ttl", "1h"]);
    let _sim = SimFleet::start_with(dir.path(), &urls, Some(&token), &sim_options(8));
    wait_until(Duration::from_secs(60), "eight machines online", || {
        let machines = other.machines();
        (machines.len() == 8 && machines.iter().all(|machine| machine["online"] == true)).then_some(())
    });
    apply(&other, dir.path(), &spec('1', "canary = 1\nmax_unavailable = 1"));
    let id = start(&other, &["render"]);

    // The watch reads from controller A; B is among the config's other servers.
    let config = dir.path().join("watch.toml");
    config_naming(&watched, &watched.url, &[&other.url], &config);
    let mut watch = Running::start(
        &config,
        &["rollout", "watch", &id.to_string(), "--timeout", "4m"],
        &dir.path().join("watch.log"),
    );
    wait_until(Duration::from_secs(30), "the watch to follow the rollout", || {
        watch.output().contains("watching").then_some(())
    });
    let progress = status(&other, id);
    assert_eq!(progress["state"], "running", "the rollout ended before the controller died: {progress}");
    watched.kill();

    let exit = watch.wait(Duration::from_secs(240));
    let done = wait_for_state(&other, id, "succeeded", Duration::from_secs(10));
    assert_eq!(done["counts"]["active"], 8, "{}", done["counts"]);
    assert!(exit.success(), "the watch gave up on a rollout that succeeded ({exit}):\n{}", watch.output());
    assert!(watch.output().contains("succeeded"), "{}", watch.output());
}

#[test]
fn start_wait_keeps_waiting_through_a_database_outage() {
    let dir = test_dir();
    let mut postgres = Server::start();
    let url = postgres.create_database("fleet");
    let args = postgres_args(dir.path(), &url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = Controller::start_with(&dir.path().join("controller"), 0, &args);
    let _sim = SimFleet::start(dir.path(), &controller, &sim_options(6));
    wait_until(Duration::from_secs(60), "six machines online", || {
        let machines = controller.machines();
        (machines.len() == 6 && machines.iter().all(|machine| machine["online"] == true)).then_some(())
    });
    apply(&controller, dir.path(), &spec('1', "canary = 1\nmax_unavailable = 1"));

    let mut wait = Running::start(
        &controller.admin_config(),
        &["rollout", "start", "render", "--wait", "--timeout", "4m"],
        &dir.path().join("wait.log"),
    );
    wait_until(Duration::from_secs(30), "the rollout to start and be followed", || {
        wait.output().contains("watching").then_some(())
    });
    postgres.stop();
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        wait.child.try_wait().unwrap().is_none(),
        "--wait gave up while the database was down:\n{}",
        wait.output()
    );
    postgres.restart();

    let exit = wait.wait(Duration::from_secs(240));
    assert!(exit.success(), "--wait failed on a rollout that went on ({exit}):\n{}", wait.output());
    assert!(wait.output().contains("succeeded"), "{}", wait.output());
}
