//! The stand-ins proven with the real parts that will use them: real `uv` installs
//! torch, ComfyUI's requirements and a kernel wheel from the stand-in index served
//! over HTTP; the venv's real Python imports them; the stand-in ComfyUI answers
//! ComfyUI's API; the server counts, delays and corrupts what it serves.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use comfyfleet_config::{Spec, SpecFormat};
use comfyfleet_e2e::standin::{
    CatalogOptions, GPU_PROFILE_VARIABLE, IMPORT_LOG_VARIABLE, IndexServer, Manifest, StandinWorld, find_uv,
    system_python,
};
use comfyfleet_e2e::{Process, test_dir, wait_until};
use serde_json::Value;

/// A venv made by the real uv, with its cache beside it.
struct Venv {
    python: PathBuf,
    cache: PathBuf,
}

impl Venv {
    fn create(dir: &Path) -> Venv {
        let venv = Venv { python: dir.join("venv/bin/python"), cache: dir.join("uv-cache") };
        let venv_dir = dir.join("venv");
        succeed(venv.uv(&["venv", "--quiet", "--python", &system_python().version]).arg(&venv_dir));
        venv
    }

    /// `uv` isolated from the machine: its own cache, no config files, no downloads.
    fn uv(&self, args: &[&str]) -> Command {
        let mut command = Command::new(find_uv());
        command
            .args(args)
            .env("UV_CACHE_DIR", &self.cache)
            .env("UV_PYTHON_DOWNLOADS", "never")
            .env("UV_NO_CONFIG", "1")
            .env_remove("UV_INDEX_URL")
            .env_remove("UV_DEFAULT_INDEX")
            .env_remove("UV_EXTRA_INDEX_URL")
            .env_remove("UV_INDEX")
            .env_remove("VIRTUAL_ENV");
        command
    }

    /// `uv pip install --python VENV` from the stand-in indexes, torch from cu128.
    fn pip_install(&self, base: &str, args: &[&str]) -> Command {
        let mut command = self.uv(&["pip", "install", "--python"]);
        command.arg(&self.python);
        command.args(["--default-index", &format!("{base}/simple"), "--index", &format!("{base}/whl/cu128")]);
        command.args(args);
        command
    }

    fn install_torch(&self, base: &str) -> String {
        succeed(&mut self.pip_install(
            base,
            &["torch==2.8.0+cu128", "torchvision==0.23.0+cu128", "torchaudio==2.8.0+cu128"],
        ))
    }

    /// What the venv's Python prints for `script`, parsed as JSON.
    fn python_json(&self, script: &str) -> Value {
        self.python_json_with(script, &[])
    }

    fn python_json_with(&self, script: &str, env: &[(&str, &Path)]) -> Value {
        let mut command = Command::new(&self.python);
        command.args(["-c", script]);
        for (name, value) in env {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "python failed: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    }
}

/// Runs `command`, failing the test with its output if it fails; returns stdout and
/// stderr together (uv reports on stderr).
fn succeed(command: &mut Command) -> String {
    let output: Output = command.output().unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    assert!(output.status.success(), "{command:?} failed: {}{}", text(&output.stdout), text(&output.stderr));
    text(&output.stdout) + &text(&output.stderr)
}

fn world(dir: &Path) -> StandinWorld {
    StandinWorld::create(&dir.join("world"), &CatalogOptions::new(&system_python().tag), 0)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP/1.1 exchange on a fresh connection that the server closes after.
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let (status, _, body) = read_response(&mut reader, method == "HEAD");
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn http_json(port: u16, method: &str, path: &str, body: &str) -> Value {
    let (status, text) = http(port, method, path, body);
    assert_eq!(status, 200, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Status, headers (lowercase names) and body of the next response on a connection.
fn read_response(reader: &mut impl BufRead, head_only: bool) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status =
        status_line.split_whitespace().nth(1).unwrap_or_else(|| panic!("no status: {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let Some((name, value)) = line.trim_end().split_once(':') else { break };
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    let length =
        headers.iter().find(|(name, _)| name == "content-length").map(|(_, value)| value.parse().unwrap());
    let mut body = Vec::new();
    match (head_only, length) {
        (true, _) => {}
        (false, Some(length)) => reader.take(length).read_to_end(&mut body).map(drop).unwrap(),
        (false, None) => reader.read_to_end(&mut body).map(drop).unwrap(),
    }
    (status.parse().unwrap(), headers, body)
}

/// Clones the stand-in ComfyUI at `reference` with both custom nodes, as an agent lays it out.
fn checkout_comfyui(world: &StandinWorld, dir: &Path, reference: &str) -> PathBuf {
    let clone = |url: &str, into: &Path| {
        succeed(Command::new("git").args(["clone", "--quiet", url]).arg(into));
    };
    clone(&world.repos.comfyui.url(), dir);
    succeed(Command::new("git").arg("-C").arg(dir).args(["checkout", "--quiet", reference]));
    clone(&world.repos.kjnodes.url(), &dir.join("custom_nodes/ComfyUI-KJNodes"));
    clone(&world.repos.video_helper_suite.url(), &dir.join("custom_nodes/ComfyUI-VideoHelperSuite"));
    dir.to_owned()
}

fn start_comfyui(venv: &Venv, comfyui: &Path, port: u16, import_log: &Path, extra: &[&str]) -> Process {
    let mut command = Command::new(&venv.python);
    command.arg(comfyui.join("main.py")).args(["--port", &port.to_string()]).args(extra);
    command.current_dir(comfyui).env(IMPORT_LOG_VARIABLE, import_log);
    Process::spawn("stand-in ComfyUI", command, &comfyui.with_extension("log"))
}

fn wait_listening(comfyui: &mut Process, port: u16) {
    let expected = format!("To see the GUI go to: http://127.0.0.1:{port}");
    wait_until(Duration::from_secs(10), "the stand-in ComfyUI to listen", || {
        comfyui.assert_running();
        comfyui.log().contains(&expected).then_some(())
    });
}

#[test]
fn uv_installs_torch_comfyui_requirements_and_a_kernel_wheel_from_the_stand_ins() {
    let dir = test_dir();
    let world = world(dir.path());
    let (server, catalog) = (&world.server, &world.catalog);
    let base = server.base_url();
    let venv = Venv::create(dir.path());

    let torch_log = venv.install_torch(&base);
    assert!(torch_log.contains("torch==2.8.0+cu128"), "{torch_log}");
    let build = catalog.torch_build("2.8.0+cu128");
    let torch_count = server.count(&build.torch.url_path);
    assert_eq!(
        (torch_count.requests, torch_count.bytes),
        (1, build.torch.wheel.size),
        "torch downloaded once, whole"
    );
    let metadata = server.count(&format!("{}.metadata", build.torch.url_path));
    assert_eq!(metadata.requests, 1, "resolved from the PEP 658 metadata");
    assert!(server.requests_matching("/whl/cu128/torch") >= 1);

    // ComfyUI's requirements and both nodes', torch held where it is (the nodes ask
    // for torch==2.3.0 and torch-cpu: both decoys on the default index).
    let overrides = dir.path().join("overrides.txt");
    std::fs::write(
        &overrides,
        "torch==2.8.0+cu128\ntorchvision==0.23.0+cu128\ntorchaudio==2.8.0+cu128\ntorch-cpu ; sys_platform == \"never\"\n",
    )
    .unwrap();
    let requirements = [&world.repos.comfyui.repo, &world.repos.kjnodes, &world.repos.video_helper_suite]
        .map(|repo| repo.path.join("requirements.txt"));
    let mut install = venv.pip_install(&base, &["--overrides"]);
    install.arg(&overrides);
    for file in &requirements {
        install.arg("-r").arg(file);
    }
    let requirements_log = succeed(&mut install);
    assert!(requirements_log.contains("comfyui-frontend-package==1.45.15"), "{requirements_log}");
    for decoy in &catalog.decoys {
        assert_eq!(server.requests_matching(&decoy.url_path), 0, "{} was downloaded", decoy.wheel.file_name);
    }

    let sageattention = catalog.sageattention_for("8.9", "cu128", "2.8");
    succeed(
        venv.uv(&["pip", "install", "--python"])
            .arg(&venv.python)
            .arg(format!("{base}{}", sageattention.wheel.url_path)),
    );

    let facts = venv.python_json(
        "import json, importlib.metadata as m, torch, sageattention, einops, imageio_ffmpeg, \
         comfyui_frontend_package as f\n\
         print(json.dumps({'version': torch.__version__, 'cuda': torch.version.cuda, \
         'available': torch.cuda.is_available(), 'arch': torch.cuda.get_arch_list(), \
         'built_for': sageattention.BUILT_FOR, 'compute': sageattention.COMPUTE, 'frontend': f.__version__, \
         'distributions': sorted(d.metadata['Name'] for d in m.distributions())}))",
    );
    assert_eq!(facts["version"], "2.8.0+cu128");
    assert_eq!(facts["cuda"], "12.8");
    assert_eq!(facts["available"], true);
    assert_eq!(facts["arch"], serde_json::json!(build.arch_list));
    assert_eq!(facts["arch"][0], "sm_70");
    assert_eq!(facts["built_for"], serde_json::json!({"sm": "8.9", "cuda": "cu128", "torch": "2.8"}));
    assert_eq!(facts["compute"], ">=8.9,<9.0");
    assert_eq!(facts["frontend"], "1.45.15");
    let distributions = facts["distributions"].as_array().unwrap();
    assert!(!distributions.iter().any(|name| name == "torch-cpu"), "{distributions:?}");
    assert_eq!(distributions.iter().filter(|name| *name == "torch").count(), 1);

    // torch.cuda sees the GPUs of the fake NVML profile, and kernels run only where
    // they were built for: the SM 8.9 wheel on the 4090, not on the A6000 (SM 8.6).
    let profile = dir.path().join("gpus.json");
    std::fs::write(&profile, serde_json::to_vec(&comfyfleet_e2e::profile("mixed-4090-a6000-570")).unwrap())
        .unwrap();
    let smoke = venv.python_json_with(
        "import json, torch, sageattention\n\
         def run(i):\n\
         \x20   try:\n\
         \x20       q = torch.randn(1, 2, 128, 64, dtype=torch.float16, device=torch.device('cuda', i))\n\
         \x20       return tuple(sageattention.sageattn(q, q, q).shape) == tuple(q.shape)\n\
         \x20   except RuntimeError as error:\n\
         \x20       return str(error)\n\
         print(json.dumps({'count': torch.cuda.device_count(), 'names': [torch.cuda.get_device_name(i) for i in range(2)], \
         'runs': [run(0), run(1)]}))",
        &[(GPU_PROFILE_VARIABLE, &profile)],
    );
    assert_eq!(smoke["count"], 2);
    assert_eq!(smoke["names"], serde_json::json!(["NVIDIA GeForce RTX 4090", "NVIDIA RTX A6000"]));
    assert_eq!(smoke["runs"][0], true, "{smoke}");
    assert!(smoke["runs"][1].as_str().unwrap().contains("no kernel image is available"), "{smoke}");
    // A torch without code for a GPU cannot put a tensor on it, as real torch cannot.
    let pascal = dir.path().join("pascal.json");
    std::fs::write(&pascal, serde_json::to_vec(&comfyfleet_e2e::profile("gtx1080ti-x1-570")).unwrap())
        .unwrap();
    let placed = venv.python_json_with(
        "import json, torch\n\
         try:\n\
         \x20   torch.randn(2, device='cuda:0'); print(json.dumps('placed'))\n\
         except RuntimeError as error:\n\
         \x20   print(json.dumps(str(error)))",
        &[(GPU_PROFILE_VARIABLE, &pascal)],
    );
    assert!(placed.as_str().unwrap().contains("no kernel image"), "torch 2.8 cu128 has no sm_6x: {placed}");

    // A corrupted download: a valid wheel of the same name with other content (the
    // SM 8.9 build where the SM 8.6 one belongs); uv, given the digest, refuses it.
    let sm86 = catalog.sageattention_for("8.6", "cu128", "2.8");
    server.replace(&sm86.wheel.url_path, std::fs::read(&sageattention.wheel.wheel.path).unwrap());
    let pinned = dir.path().join("pinned.txt");
    std::fs::write(
        &pinned,
        format!("sageattention @ {base}{} --hash=sha256:{}\n", sm86.wheel.url_path, sm86.wheel.wheel.sha256),
    )
    .unwrap();
    let corrupted = venv
        .uv(&["pip", "install", "--reinstall", "--python"])
        .arg(&venv.python)
        .arg("-r")
        .arg(&pinned)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&corrupted.stderr);
    assert!(!corrupted.status.success(), "uv installed a replaced body: {stderr}");
    assert!(stderr.contains("Hash mismatch") && stderr.contains(&sm86.wheel.wheel.sha256), "{stderr}");
    server.restore(&sm86.wheel.url_path);
    succeed(venv.uv(&["pip", "install", "--reinstall", "--python"]).arg(&venv.python).arg("-r").arg(&pinned));
}

#[test]
fn the_stand_in_comfyui_serves_comfyuis_api_and_stops_when_its_directory_goes() {
    let dir = test_dir();
    let world = world(dir.path());
    let venv = Venv::create(dir.path());
    venv.install_torch(&world.server.base_url());
    succeed(&mut venv.pip_install(&world.server.base_url(), &["einops", "imageio-ffmpeg"]));

    let comfyui = checkout_comfyui(&world, &dir.path().join("ComfyUI"), "v0.3.64");
    // A node that fails to import: ComfyUI logs it and runs on without it.
    let broken = comfyui.join("custom_nodes/broken-node");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("__init__.py"), "import no_such_module_here\nNODE_CLASS_MAPPINGS = {}\n")
        .unwrap();
    let (output, user, import_log) =
        (dir.path().join("output"), dir.path().join("user"), dir.path().join("imports.log"));
    // ComfyUI keeps its database inside the checkout unless told otherwise.
    let database = dir.path().join("database/comfyui.db");
    let database_url = format!("sqlite:///{}", database.display());
    let port = free_port();
    let started = Instant::now();
    let mut process = start_comfyui(
        &venv,
        &comfyui,
        port,
        &import_log,
        &[
            "--output-directory",
            output.to_str().unwrap(),
            "--user-directory",
            user.to_str().unwrap(),
            "--preview-method",
            "auto",
            "--database-url",
            &database_url,
        ],
    );
    wait_listening(&mut process, port);
    eprintln!("the stand-in ComfyUI listened after {:?}", started.elapsed());

    let stats = http_json(port, "GET", "/system_stats", "");
    assert_eq!(stats["system"]["pytorch_version"], "2.8.0+cu128");
    assert_eq!(stats["system"]["comfyui_version"], "0.3.64");
    assert_eq!(stats["devices"][0]["type"], "cuda");
    assert!(stats["system"]["argv"].as_array().unwrap().iter().any(|arg| arg == "--preview-method"));
    let imports = std::fs::read_to_string(&import_log).unwrap();
    assert_eq!(imports.lines().count(), 1, "ComfyUI imported torch once: {imports}");
    assert!(imports.contains("main.py --port"), "{imports}");
    let nodes = http_json(port, "GET", "/object_info", "");
    let vhs = &nodes["VHS_VideoCombine"];
    assert_eq!(
        vhs["python_module"],
        "custom_nodes.ComfyUI-VideoHelperSuite",
        "loaded: {nodes}\n{}",
        process.log()
    );
    assert!(vhs["input"].is_object() && vhs["output"].is_array() && vhs["output_node"].is_boolean(), "{vhs}");
    // ComfyUI's own lines for a node that does not import, before the routes answered.
    let log = process.log();
    let failed_at =
        log.find(&format!("Cannot import {} module for custom nodes: No module named", broken.display()));
    let listed = log.find(&format!(" seconds (IMPORT FAILED): {}", broken.display()));
    let serving = log.find("To see the GUI go to");
    assert!(failed_at < listed && listed < serving && failed_at.is_some(), "{log}");
    assert!(
        log.contains("Traceback (most recent call last):") && log.contains("ModuleNotFoundError"),
        "{log}"
    );
    assert!(log.contains("Import times for custom nodes:"), "{log}");
    // The database, where it was asked to be, migrated to the checkout's head.
    let revision = succeed(Command::new(&venv.python).arg("-c").arg(format!(
        "import sqlite3; print(sqlite3.connect('{}').execute('select version_num from alembic_version').fetchone()[0])",
        database.display()
    )));
    assert_eq!(revision.trim(), comfyfleet_e2e::standin::repos::FIRST_MIGRATION);
    assert!(log.contains(&format!("Database upgraded from None to {}", revision.trim())), "{log}");

    assert_eq!(
        http_json(port, "GET", "/queue", ""),
        serde_json::json!({"queue_running": [], "queue_pending": []})
    );
    let release = dir.path().join("release-render");
    let prompt = serde_json::json!({"prompt": {"wait_for_file": release}, "client_id": "test"}).to_string();
    let queued = http_json(port, "POST", "/prompt", &prompt);
    let prompt_id = queued["prompt_id"].as_str().unwrap().to_owned();
    assert_eq!(queued["node_errors"], serde_json::json!({}));
    // The worker takes it from pending to running.
    let running = wait_until(Duration::from_secs(5), "the prompt to run", || {
        let queue = http_json(port, "GET", "/queue", "");
        (queue["queue_running"].as_array().unwrap().len() == 1).then_some(queue)
    });
    assert_eq!(running["queue_running"][0][1], prompt_id.as_str());
    assert_eq!(running["queue_pending"], serde_json::json!([]));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        http_json(port, "GET", "/queue", "")["queue_running"].as_array().unwrap().len(),
        1,
        "runs until the file exists"
    );
    assert_eq!(http(port, "POST", "/prompt", "{}").0, 400, "a body without a prompt is refused");

    std::fs::write(&release, "").unwrap();
    wait_until(Duration::from_secs(5), "the render to finish", || {
        let queue = http_json(port, "GET", "/queue", "");
        queue["queue_running"].as_array().unwrap().is_empty().then_some(())
    });
    assert!(http_json(port, "GET", "/history", "").get(&prompt_id).is_some());
    assert!(output.join("ComfyUI_00000_.txt").exists(), "the render's output is in --output-directory");
    for checkout in [
        comfyui.clone(),
        comfyui.join("custom_nodes/ComfyUI-KJNodes"),
        comfyui.join("custom_nodes/ComfyUI-VideoHelperSuite"),
    ] {
        let status = succeed(Command::new("git").arg("-C").arg(&checkout).args([
            "status",
            "--porcelain",
            "--ignored",
            "--",
            ".",
            ":(exclude)custom_nodes",
        ]));
        assert_eq!(status, "", "ComfyUI wrote into {}", checkout.display());
    }
    let site_packages = dir.path().join(format!("venv/lib/python{}/site-packages", system_python().version));
    assert!(site_packages.join("torch/__init__.py").exists());
    assert!(!site_packages.join("torch/__pycache__").exists(), "ComfyUI wrote bytecode into the venv");

    std::fs::remove_dir_all(&comfyui).unwrap();
    let exit = process.wait_exit(Duration::from_secs(5));
    assert_eq!(exit.code(), Some(3), "the watchdog ends the process when its directory goes");
}

#[test]
fn the_stand_in_comfyui_0_33_logs_in_colour_honours_the_whitelist_and_finds_every_model_folder() {
    let dir = test_dir();
    let world = world(dir.path());
    let venv = Venv::create(dir.path());
    venv.install_torch(&world.server.base_url());
    succeed(&mut venv.pip_install(&world.server.base_url(), &["einops", "imageio-ffmpeg"]));
    let version = world.repos.comfyui.commit_version_0_33();
    let comfyui = checkout_comfyui(&world, &dir.path().join("ComfyUI"), &version);
    let models = dir.path().join("models");
    for (folder, file) in
        [("model_patches", "patch.safetensors"), ("latent_upscale_models", "x2.safetensors")]
    {
        std::fs::create_dir_all(models.join(folder)).unwrap();
        std::fs::write(models.join(folder).join(file), "").unwrap();
    }
    let port = free_port();
    let mut process = start_comfyui(
        &venv,
        &comfyui,
        port,
        &dir.path().join("imports.log"),
        &[
            "--user-directory",
            dir.path().join("user").to_str().unwrap(),
            "--database-url",
            &format!("sqlite:///{}", dir.path().join("comfyui.db").display()),
            "--models-directory",
            models.to_str().unwrap(),
            "--disable-all-custom-nodes",
            "--whitelist-custom-nodes",
            "ComfyUI-KJNodes",
        ],
    );
    wait_listening(&mut process, port);

    let stats = http_json(port, "GET", "/system_stats", "");
    assert_eq!(stats["system"]["comfyui_version"], "0.33.0");
    // ComfyUI 0.33's ColoredFormatter: a colour, the level, a reset, on every record.
    let log = process.log();
    assert!(
        log.contains(
            "\u{1b}[32m[INFO]\u{1b}[0m Skipping ComfyUI-VideoHelperSuite due to disable_all_custom_nodes and \
             whitelist_custom_nodes"
        ),
        "{log}"
    );
    assert!(log.contains("\u{1b}[32m[INFO]\u{1b}[0m    0.0 seconds: "), "{log}");
    assert!(!log.contains("ComfyUI-VideoHelperSuite module for custom nodes"), "no failure line: {log}");
    // Only the whitelisted node contributed node classes.
    let nodes = http_json(port, "GET", "/object_info", "");
    assert_eq!(nodes["INTConstant"]["python_module"], "custom_nodes.ComfyUI-KJNodes", "{nodes}");
    assert_eq!(nodes["CheckpointLoaderSimple"]["python_module"], "nodes");
    assert!(nodes.get("VHS_VideoCombine").is_none(), "{nodes}");
    // --models-directory moves every one of 0.33.0's 25 model folder types.
    let types = http_json(port, "GET", "/models", "");
    let types: Vec<&str> = types.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(types.len(), 27, "25 model folders, custom_nodes and datasets: {types:?}");
    assert_eq!(http_json(port, "GET", "/models/model_patches", ""), serde_json::json!(["patch.safetensors"]));
    assert_eq!(
        http_json(port, "GET", "/models/latent_upscale_models", ""),
        serde_json::json!(["x2.safetensors"])
    );
    assert_eq!(http(port, "GET", "/models/no_such_folder", "").0, 404);
}

#[test]
fn broken_comfyui_commits_fail_at_start_or_report_another_torch() {
    let dir = test_dir();
    let world = world(dir.path());
    let venv = Venv::create(dir.path());
    venv.install_torch(&world.server.base_url());
    let import_log = dir.path().join("imports.log");

    let crashing = world.repos.comfyui.commit_crash_at_start();
    let lying = world.repos.comfyui.commit_reporting_pytorch_version("2.7.1+cu126");
    let working = world.repos.comfyui.commit_working();
    assert_eq!(
        world.repos.comfyui.repo.rev_parse("v0.3.64"),
        world.repos.comfyui.repo.rev_parse(&format!("{crashing}~1"))
    );

    let checkout = checkout_comfyui(&world, &dir.path().join("crashing"), &crashing);
    let mut process = start_comfyui(&venv, &checkout, free_port(), &import_log, &[]);
    let exit = process.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.code(), Some(1), "{}", process.log());
    assert!(process.log().contains("broken build"), "{}", process.log());

    for (commit, reported) in [(lying, "2.7.1+cu126"), (working, "2.8.0+cu128")] {
        let checkout = checkout_comfyui(&world, &dir.path().join(&commit[..8]), &commit);
        let port = free_port();
        let mut process = start_comfyui(&venv, &checkout, port, &import_log, &[]);
        wait_listening(&mut process, port);
        assert_eq!(http_json(port, "GET", "/system_stats", "")["system"]["pytorch_version"], reported);
    }
}

#[test]
fn the_index_server_speaks_keep_alive_http_and_injects_faults() {
    let dir = test_dir();
    std::fs::create_dir_all(dir.path().join("simple/numpy")).unwrap();
    std::fs::write(dir.path().join("simple/numpy/index.html"), "<a href=\"/files/x.whl\">x.whl</a>\n")
        .unwrap();
    std::fs::create_dir_all(dir.path().join("files")).unwrap();
    std::fs::write(dir.path().join("files/torch-2.8.0+cu128-py3-none-any.whl"), vec![7u8; 5000]).unwrap();
    std::fs::write(dir.path().join("secret"), "outside the files").unwrap();
    let server = IndexServer::start(dir.path());

    // Several requests, HEAD included, on one keep-alive connection.
    let stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut exchange = |method: &str, path: &str| {
        write!(writer, "{method} {path} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip, br\r\n\r\n").unwrap();
        read_response(&mut reader, method == "HEAD")
    };
    let (status, headers, page) = exchange("GET", "/simple/numpy/");
    assert_eq!(status, 200);
    assert!(headers.iter().any(|(name, value)| name == "content-type" && value.starts_with("text/html")));
    assert_eq!(exchange("GET", "/simple/numpy").2, page, "with or without the slash");
    let (status, headers, body) = exchange("HEAD", "/files/torch-2.8.0%2Bcu128-py3-none-any.whl");
    assert_eq!((status, body.len()), (200, 0));
    assert!(headers.contains(&("content-length".to_owned(), "5000".to_owned())), "{headers:?}");
    assert_eq!(exchange("GET", "/files/torch-2.8.0%2Bcu128-py3-none-any.whl").2.len(), 5000);
    assert_eq!(exchange("GET", "/files/torch-2.8.0+cu128-py3-none-any.whl.metadata").0, 404);
    assert_eq!(exchange("GET", "/files/../secret").0, 404);
    assert_eq!(exchange("GET", "/files/%2e%2e/secret").0, 404);
    assert_eq!(exchange("GET", "/nothing/here").0, 404);

    assert_eq!(server.requests_matching("/files/torch-2.8.0+cu128"), 3);
    assert_eq!(server.bytes_matching("/files/torch-2.8.0+cu128-py3-none-any.whl"), 5000);
    assert!(server.bytes_served() >= 5000 + 2 * page.len() as u64);
    server.reset_counts();
    assert_eq!(server.bytes_served(), 0);

    server.set_delay("/simple/", Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(http(server.port(), "GET", "/simple/numpy/", "").0, 200);
    assert!(started.elapsed() >= Duration::from_millis(300), "delayed: {:?}", started.elapsed());
    server.clear_delays();

    server.replace("/files/torch-2.8.0%2Bcu128-py3-none-any.whl", b"corrupt".to_vec());
    assert_eq!(
        http(server.port(), "GET", "/files/torch-2.8.0+cu128-py3-none-any.whl", ""),
        (200, "corrupt".to_owned())
    );
    server.restore("/files/torch-2.8.0+cu128-py3-none-any.whl");
    assert_eq!(http(server.port(), "GET", "/files/torch-2.8.0+cu128-py3-none-any.whl", "").1.len(), 5000);

    // Dropping the server with a connection still open stops it.
    let idle = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    let port = server.port();
    drop(server);
    drop(idle);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "nothing listens after drop");
}

#[test]
fn the_standin_binary_serves_writes_its_manifest_and_localizes_the_example_spec() {
    let dir = test_dir();
    let binary = env!("CARGO_BIN_EXE_comfyfleet-standin");
    let mut child = Command::new(binary)
        .args(["serve", "--dir"])
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Killed on any panic below; closing stdin is the clean stop.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut child = KillOnDrop(child);
    let mut base = String::new();
    BufReader::new(stdout).read_line(&mut base).unwrap();
    let base = base.trim();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    let manifest = Manifest::read(&dir.path().join("standin.json")).unwrap();
    assert_eq!(manifest.base_url, base);
    let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(http(port, "GET", "/simple/einops/", "").0, 200);
    let spec_text = std::fs::read_to_string(&manifest.spec).unwrap();
    let spec = Spec::parse("spec.toml", &spec_text, SpecFormat::Toml).unwrap();
    assert_eq!(spec.comfyui.git, manifest.repo("ComfyUI").unwrap().url);
    assert_eq!(spec.custom_nodes.len(), 2);
    assert_eq!(spec.run.port, 8188);

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/examples/render-farm.toml");
    let localized = dir.path().join("render-farm.local.toml");
    let status = Command::new(binary)
        .args(["localize-spec", "--spec"])
        .arg(&example)
        .arg("--standin")
        .arg(dir.path().join("standin.json"))
        .arg("--out")
        .arg(&localized)
        .status()
        .unwrap();
    assert!(status.success());
    let localized = std::fs::read_to_string(&localized).unwrap();
    let spec = Spec::parse("render-farm.local.toml", &localized, SpecFormat::Toml).unwrap();
    assert_eq!(spec.name, "render-prod");
    assert!(spec.optimizations[0].wheels.iter().all(|wheel| wheel.url.starts_with(base)), "{localized}");

    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "comfyfleet-standin did not stop when stdin closed");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}
