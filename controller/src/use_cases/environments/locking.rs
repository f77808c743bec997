//! Locking a revision at apply: for every build class the targeted fleet needs
//! (plus the ones the spec's `lock.classes` or `--class` name), the requirement
//! files of ComfyUI and every custom node at their pinned commits are resolved by uv
//! (`uv pip compile` for the class's Python and platform, torch and its companions
//! held at the class's build with overrides, hashes from the index) into a
//! [`Lock`]. The spec names each lock by digest, so the revision id covers them.
//!
//! Requirement files come from repositories, so option lines in them are dropped as
//! the agent always did (packages come from the spec's indexes only).
//!
//! Nothing of a package runs here: uv resolves from wheels only (`--no-build`), so a
//! package that exists only as a source distribution is refused, by name, before its
//! build backend could run as the controller's user (who can read the CA key and every
//! stored secret). uv runs in the daemons' allow-listed environment with only the
//! credentials of the spec's indexes added, and dies with the controller.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use comfyfleet_config::MachineRecord;
use comfyfleet_config::lock::{BuildClass, Lock};
use comfyfleet_config::requirements::{TORCH_IMPOSTORS, sanitize};
use comfyfleet_config::resolve::{LockInputs, MachineFacts, Resolver};
use comfyfleet_config::source_credentials::SourceCredentials;
use comfyfleet_config::spec::Spec;
use comfyfleet_config::spec::names::normalize_package_name;
use comfyfleet_config::text::Escaped;
use tokio::process::Command;

use crate::store::{PackageFile, StoredLock};
use crate::use_cases::sources::git_mirror::GitMirror;

mod source_only;
use source_only::{ClassFailure, SourceOnly};

/// uv resolving one class against a real index takes seconds; a hung index must
/// not hold apply forever.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(600);
/// uv's output kept for an error message.
const ERROR_LINES: usize = 12;

/// What apply locks with.
#[derive(Debug, Clone)]
pub struct Locker {
    /// `--uv`, else `uv` on PATH.
    pub uv: Option<PathBuf>,
    /// What uv's environment is made of.
    pub children: comfyfleet_daemon::child_env::ChildEnvironment,
    /// Scratch space and uv's cache for resolving.
    pub work: PathBuf,
    pub mirror: GitMirror,
    /// The policy-checked client the uv page is read with.
    pub upstream: crate::use_cases::sources::upstream_client::UpstreamClient,
}

/// The build classes the machines a spec targets need now.
pub fn fleet_classes(spec: &Spec, machines: &[MachineRecord]) -> BTreeSet<String> {
    let resolver = Resolver::new(spec);
    machines
        .iter()
        .filter_map(|record| {
            let facts = MachineFacts::from(record);
            if let Some(selector) = &spec.target.selector
                && !selector.matches(&facts)
            {
                return None;
            }
            resolver.plan_unlocked(&facts).ok().map(|plan| plan.class())
        })
        .collect()
}

/// The classes to lock when nothing else names one: every CUDA build the spec
/// allows, on x86_64 (a fleet's first apply, before any machine has joined).
pub fn default_classes(spec: &Spec) -> BTreeSet<String> {
    spec.torch
        .cuda
        .iter()
        .map(|cuda| comfyfleet_config::lock::class_name(&spec.python.tag(), &cuda.to_string(), "x86_64"))
        .collect()
}

/// A lock made, ready to store with its revision.
pub struct Locked {
    pub locks: Vec<Lock>,
    /// The pinned uv wheels as the spec's index lists them (agents without uv
    /// fetch one through the package cache).
    pub tools: Vec<PackageFile>,
}

impl Locked {
    pub fn stored(&self) -> Vec<StoredLock> {
        self.locks
            .iter()
            .map(|lock| StoredLock {
                digest: lock.digest(),
                class: lock.class.clone(),
                lock_json: lock.to_canonical_json(),
            })
            .collect()
    }

    /// Every file of every lock, and the spec's kernel wheels: what the package cache
    /// may fetch for this revision.
    pub fn files(&self, spec: &Spec) -> Vec<PackageFile> {
        let mut files: BTreeMap<String, PackageFile> = BTreeMap::new();
        for package in self.locks.iter().flat_map(|lock| &lock.packages) {
            files.insert(
                package.sha256.clone(),
                PackageFile {
                    sha256: package.sha256.clone(),
                    url: package.url.clone(),
                    file_name: package.file_name(),
                    size: package.size,
                },
            );
        }
        files.extend(kernel_wheel_files(spec).into_iter().map(|file| (file.sha256.clone(), file)));
        files.extend(
            crate::use_cases::environments::model_files::model_files(spec)
                .into_iter()
                .map(|file| (file.sha256.clone(), file)),
        );
        files.extend(self.tools.iter().map(|file| (file.sha256.clone(), file.clone())));
        files.into_values().collect()
    }
}

/// The spec's prebuilt wheels, by sha256.
pub fn kernel_wheel_files(spec: &Spec) -> Vec<PackageFile> {
    spec.optimizations
        .iter()
        .flat_map(|optimization| &optimization.wheels)
        .filter_map(|wheel| {
            let name = comfyfleet_config::spec::wheel::WheelName::from_url(&wheel.url)
                .map(|name| name.filename)
                .unwrap_or_else(|_| "wheel.whl".to_owned());
            let sha256 = wheel.sha256.as_ref()?.to_string();
            Some(PackageFile { sha256, url: wheel.url.clone(), file_name: name, size: None })
        })
        .collect()
}

/// Where the spec's index serves the uv wheels comfyfleet pins, read off its `uv`
/// page; none when the index does not list them (machines with uv never need one).
pub async fn uv_wheels(
    spec: &Spec,
    credentials: &SourceCredentials,
    upstream: &crate::use_cases::sources::upstream_client::UpstreamClient,
) -> Vec<PackageFile> {
    use comfyfleet_config::uv_pin::{PINNED_UV_WHEELS, find_link, join_url};
    let page_url = format!("{}/uv/", spec.index.url.trim_end_matches('/'));
    let mut request = match upstream.get(&page_url).await {
        Ok(request) => request.timeout(Duration::from_secs(30)),
        Err(refused) => {
            tracing::debug!(%page_url, %refused, "the uv page is not read");
            return Vec::new();
        }
    };
    if let Some(authorization) = credentials.authorization(&page_url) {
        request = request.header(reqwest::header::AUTHORIZATION, authorization);
    }
    let page = match request.send().await.and_then(reqwest::Response::error_for_status) {
        Ok(response) => {
            let base = response.url().to_string();
            match response.text().await {
                Ok(text) => (text, base),
                Err(_) => return Vec::new(),
            }
        }
        Err(error) => {
            tracing::debug!(page_url = %Escaped(&page_url), error = %Escaped(&error), "the index lists no uv wheel for the package cache");
            return Vec::new();
        }
    };
    PINNED_UV_WHEELS
        .iter()
        .filter_map(|(_, file_name, sha256)| {
            let href = find_link(&page.0, file_name)?;
            Some(PackageFile {
                sha256: (*sha256).to_owned(),
                url: join_url(&page.1, &href),
                file_name: (*file_name).to_owned(),
                size: None,
            })
        })
        .collect()
}

impl Locker {
    /// Locks every class in `classes` for the pinned `spec`.
    pub async fn lock(
        &self,
        spec: &Spec,
        classes: &BTreeSet<String>,
        credentials: &SourceCredentials,
    ) -> Result<Locked, String> {
        let uv = self.uv_binary()?;
        let sources = self.requirement_files(spec, credentials).await?;
        let resolver = Resolver::new(spec);
        let mut locks = Vec::new();
        let mut problems = Vec::new();
        let mut source_only = SourceOnly::default();
        for class in classes {
            let class = BuildClass::parse(class)?;
            let inputs = match resolver.lock_inputs(&class) {
                Ok(inputs) => inputs,
                Err(problem) => {
                    problems.push(problem);
                    continue;
                }
            };
            match self.lock_class(&uv, spec, &class, &inputs, &sources, credentials).await {
                Ok(lock) => locks.push(lock),
                Err(ClassFailure::SourceOnly(packages)) => source_only.add(&packages, &class),
                Err(ClassFailure::Other(problem)) => problems.push(format!("build class {class}: {problem}")),
            }
        }
        problems.extend(source_only.refusals());
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        Ok(Locked { locks, tools: uv_wheels(spec, credentials, &self.upstream).await })
    }

    fn uv_binary(&self) -> Result<PathBuf, String> {
        if let Some(uv) = &self.uv {
            return Ok(uv.clone());
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join("uv"))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| {
                "apply locks every build class with uv, and the controller finds no uv: install uv on the \
             controller's machine (`pip install uv`) or start it with --uv PATH"
                    .to_owned()
            })
    }

    /// ComfyUI's and each custom node's `requirements.txt` at their pinned commits, and
    /// ComfyUI's `manager_requirements.txt` when the spec runs the manager.
    async fn requirement_files(
        &self,
        spec: &Spec,
        credentials: &SourceCredentials,
    ) -> Result<Vec<(String, String)>, String> {
        let mut sources = vec![("ComfyUI".to_owned(), spec.comfyui.git.clone(), spec.comfyui.commit.clone())];
        for node in &spec.custom_nodes {
            sources.push((node.directory_name(), node.git.clone(), node.commit.clone()));
        }
        let mut files = Vec::new();
        for (index, (name, git, commit)) in sources.into_iter().enumerate() {
            let commit = commit.ok_or_else(|| format!("{name} is not pinned to a commit"))?;
            // ComfyUI's manager_requirements.txt too when the manager runs.
            let paths = if index == 0 {
                comfyfleet_config::comfyui_checkout::requirement_files(spec.run.manager)
            } else {
                vec![comfyfleet_config::comfyui_checkout::REQUIREMENTS]
            };
            for path in paths {
                let text = self
                    .mirror
                    .read_file(&git, &commit, path, credentials)
                    .await
                    .map_err(|error| format!("reading {name}'s {path}: {error}"))?;
                if let Some(text) = text {
                    let label = if path == comfyfleet_config::comfyui_checkout::REQUIREMENTS {
                        name.clone()
                    } else {
                        format!("{name}.manager_requirements")
                    };
                    files.push((label, text));
                }
            }
        }
        Ok(files)
    }

    async fn lock_class(
        &self,
        uv: &Path,
        spec: &Spec,
        class: &BuildClass,
        inputs: &LockInputs,
        sources: &[(String, String)],
        credentials: &SourceCredentials,
    ) -> Result<Lock, ClassFailure> {
        let dir = self.work.join(format!("{class}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
        let held: Vec<String> = inputs
            .pins
            .iter()
            .map(|pin| normalize_package_name(pin.split("==").next().unwrap_or(pin)))
            .chain(TORCH_IMPOSTORS.iter().map(|name| (*name).to_owned()))
            .collect();
        let mut files = Vec::new();
        let mut notes = Vec::new();
        let torch = inputs.pins.first().map_or("", |pin| pin.trim_start_matches("torch=="));
        for (name, text) in sources {
            let sanitized = sanitize(text, |package| held.iter().any(|h| h == package));
            for dropped in &sanitized.dropped {
                notes.push(format!("{name}: ignored `{dropped}` (packages come from the spec's indexes)"));
            }
            // A bare `torch` is what the lock holds anyway; anything else is worth saying.
            let planned =
                |line: &str| inputs.pins.iter().any(|pin| pin.split("==").next() == Some(line.trim()));
            for line in sanitized.held.iter().filter(|line| !planned(line)) {
                notes.push(format!("{name}: `{line}` held at {torch}"));
            }
            let file = dir.join(format!("{name}.txt"));
            write(&file, &sanitized.text)?;
            files.push(file);
        }
        let mut overrides = inputs.pins.clone();
        for impostor in TORCH_IMPOSTORS {
            overrides.push(format!("{impostor} ; sys_platform == 'comfyfleet-never'"));
        }
        write(&dir.join("overrides.txt"), &(overrides.join("\n") + "\n"))?;

        let mut optional: Vec<&(String, bool)> = inputs.index_optimizations.iter().collect();
        let mut unresolved = BTreeMap::new();
        loop {
            let mut wanted = inputs.pins.clone();
            wanted.extend(optional.iter().map(|(requirement, _)| requirement.clone()));
            write(&dir.join("comfyfleet.in"), &(wanted.join("\n") + "\n"))?;
            match self.compile(uv, (spec, credentials), class, inputs, &dir, &files).await {
                Ok(text) => {
                    let mut lock = Lock::from_pylock(class, &text)?;
                    lock.unresolved = unresolved;
                    lock.notes = notes;
                    let _ = std::fs::remove_dir_all(&dir);
                    return Ok(lock);
                }
                Err(error) => {
                    // An optional index optimisation that cannot resolve with the rest
                    // is left out of the lock (machines report it failed), not the
                    // whole revision.
                    let Some(position) = optional.iter().rposition(|(_, fatal)| !fatal) else {
                        return Err(error);
                    };
                    let (requirement, _) = optional.remove(position);
                    let name = comfyfleet_config::requirements::requirement_name(requirement).to_owned();
                    unresolved.insert(normalize_package_name(&name), error.to_string());
                }
            }
        }
    }

    async fn compile(
        &self,
        uv: &Path,
        sources: (&Spec, &SourceCredentials),
        class: &BuildClass,
        inputs: &LockInputs,
        dir: &Path,
        files: &[PathBuf],
    ) -> Result<String, ClassFailure> {
        let (spec, credentials) = sources;
        let out = dir.join("pylock.toml");
        let mut command = Command::new(uv);
        self.children.apply(&mut command);
        command
            // --no-build: resolving never runs a package's build backend (uv reads
            // metadata from wheels and their PEP 658 files only).
            .args([
                "pip",
                "compile",
                "--no-build",
                "--no-config",
                "--quiet",
                "--format",
                "pylock.toml",
                "--no-header",
            ])
            .arg("--python-version")
            .arg(class.python_version())
            .arg("--python-platform")
            .arg(class.uv_platform())
            .arg("--overrides")
            .arg(dir.join("overrides.txt"))
            .arg("--output-file")
            .arg(&out)
            .arg("--index")
            .arg(credentials.uv_index(&inputs.torch_index));
        for extra in &spec.index.extra {
            command.arg("--index").arg(credentials.uv_index(extra));
        }
        command
            .arg("--default-index")
            .arg(credentials.uv_index(&spec.index.url))
            .arg(dir.join("comfyfleet.in"))
            .args(files);
        let indexes = std::iter::once(inputs.torch_index.as_str())
            .chain(spec.index.extra.iter().map(String::as_str))
            .chain(std::iter::once(spec.index.url.as_str()));
        command
            .envs(credentials.uv_env(indexes))
            .current_dir(dir)
            .env("UV_CACHE_DIR", self.work.join("uv-cache"))
            .env("UV_NO_PROGRESS", "1")
            .env("UV_PYTHON_DOWNLOADS", "never")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // A controller killed mid-apply leaves no uv resolving behind it.
        comfyfleet_daemon::children::die_with_parent(&mut command);
        let child = command.spawn().map_err(|error| format!("cannot run {}: {error}", uv.display()))?;
        let output = tokio::time::timeout(COMPILE_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| format!("uv did not resolve within {} s", COMPILE_TIMEOUT.as_secs()))?
            .map_err(|error| format!("uv failed: {error}"))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(ERROR_LINES)..].join("\n  ");
            let packages = source_only::packages_named(&stderr);
            if !packages.is_empty() {
                return Err(ClassFailure::SourceOnly(packages));
            }
            return Err(ClassFailure::Other(format!("uv could not resolve the requirements:\n  {tail}")));
        }
        Ok(std::fs::read_to_string(&out)
            .map_err(|error| format!("uv wrote no {}: {error}", out.display()))?)
    }
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|error| format!("cannot write {}: {error}", path.display()))
}
