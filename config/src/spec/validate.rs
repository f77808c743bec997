//! Rules that span fields, checked on a parsed spec. Each problem names the key path
//! it is about (as written in the file) and says what to write instead; the caller
//! turns the path into a line and column.

use std::collections::{BTreeMap, BTreeSet};

use super::catalog::TorchCatalog;
use super::names::{self, printable};
use super::wheel::WheelName;
use super::{Amount, KernelWheel, Optimization, Spec, TorchSeries};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub path: String,
    pub message: String,
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem { path: path.into(), message: message.into() });
    }

    fn check(&mut self, path: impl Into<String>, result: Result<(), String>) {
        if let Err(message) = result {
            self.add(path, message);
        }
    }
}

pub(crate) fn check(spec: &Spec) -> Vec<Problem> {
    let mut problems = Problems::default();
    let over = super::bounds::over_bounds(spec);
    if !over.is_empty() {
        for (path, message) in over {
            problems.add(path, message);
        }
        return problems.0;
    }
    let trusted = &spec.index.trusted_hosts;
    problems.check("name", names::check_name(&spec.name));
    check_lock(&mut problems, spec);
    if spec.description.as_ref().is_some_and(|d| d.len() > 4096) {
        problems.add("description", "is longer than 4096 bytes");
    }

    problems.check("comfyui.git", names::check_git_url(&spec.comfyui.git, trusted));
    problems.check("comfyui.ref", names::check_git_ref(&spec.comfyui.reference));
    check_commit(&mut problems, "comfyui.commit", spec.comfyui.commit.as_deref());

    check_torch(&mut problems, spec);
    check_index(&mut problems, spec);

    let mut optimization_names = BTreeSet::new();
    for (i, optimization) in spec.optimizations.iter().enumerate() {
        let path = format!("optimization[{i}]");
        if !optimization_names.insert(names::normalize_package_name(&optimization.name)) {
            problems
                .add(format!("{path}.name"), format!("`{}` is listed twice: keep one", optimization.name));
        }
        check_optimization(&mut problems, &path, optimization, spec);
    }

    let mut node_dirs = BTreeMap::new();
    for (i, node) in spec.custom_nodes.iter().enumerate() {
        let path = format!("custom_node[{i}]");
        problems.check(format!("{path}.git"), names::check_git_url(&node.git, trusted));
        problems.check(format!("{path}.ref"), names::check_git_ref(&node.reference));
        check_commit(&mut problems, &format!("{path}.commit"), node.commit.as_deref());
        let directory = node.directory_name();
        let name_path = if node.name.is_some() { format!("{path}.name") } else { format!("{path}.git") };
        match names::check_name(&directory) {
            Err(message) => problems.add(
                name_path,
                format!("the custom node's directory name: {message}; set name = \"...\" to choose one"),
            ),
            Ok(()) => {
                if let Some(first) = node_dirs.insert(directory.to_ascii_lowercase(), i) {
                    problems.add(
                        name_path,
                        format!(
                            "custom_node[{first}] already installs into `{directory}`: give one of them another \
                             name = \"...\""
                        ),
                    );
                }
            }
        }
    }

    for (path, message) in super::model::check(spec) {
        problems.add(path, message);
    }
    for (path, message) in super::credentials::check(spec) {
        problems.add(path, message);
    }
    check_manager(&mut problems, spec);
    check_run(&mut problems, spec, &optimization_names);
    check_rollout(&mut problems, spec);
    problems.0
}

fn check_commit(problems: &mut Problems, path: &str, commit: Option<&str>) {
    if let Some(commit) = commit
        && !names::is_commit_id(commit)
    {
        problems.add(
            path,
            format!(
                "`{}` is not a full commit id: write 40 lowercase hex digits, or leave commit out and let \
                 `comfyfleet apply` pin the ref",
                printable(commit)
            ),
        );
    }
}

fn check_torch(problems: &mut Problems, spec: &Spec) {
    let torch = &spec.torch;
    problems.check("torch.index", names::check_index_pattern(&torch.index, &spec.index.trusted_hosts));
    for (tag, url) in &torch.indexes {
        let path = format!("torch.indexes.{tag}");
        if !torch.cuda.contains(tag) {
            problems.add(&path, format!("{tag} is not in torch.cuda: allow it there, or remove this index"));
        }
        problems.check(path, names::check_download_url(url, &spec.index.trusted_hosts));
    }
    for (i, release) in torch.releases.iter().enumerate() {
        for (j, build) in release.builds.iter().enumerate() {
            if build.arch.is_empty() && build.ptx.is_empty() {
                problems.add(
                    format!("torch.release[{i}].build[{j}].arch"),
                    "is empty: list the SMs the build has kernels for, e.g. [\"8.0\", \"8.6\", \"9.0\"]",
                );
            }
        }
    }
    let catalog = match TorchCatalog::with_extensions(&torch.releases) {
        Ok(catalog) => catalog,
        Err(message) => return problems.add("torch", message),
    };
    let series = TorchSeries::of(&torch.version.0);
    let Some(release) = catalog.release(series) else {
        let known: Vec<String> = catalog.known_series().iter().map(ToString::to_string).collect();
        return problems.add(
            "torch.version",
            format!(
                "comfyfleet has no build facts for torch {series} (it knows {}): add a [[torch.release]] with \
                 series = \"{series}\" and its builds",
                known.join(", ")
            ),
        );
    };
    if let Some(problem) = release.python_problem(spec.python) {
        problems.add(
            "python",
            format!(
                "{problem}: choose a Python in that range, or another torch.version (or correct the range with a \
                 [[torch.release]] python_min/python_max)"
            ),
        );
    }
    if torch.cuda.is_empty() {
        problems.add(
            "torch.cuda",
            "is empty: list the CUDA builds to allow, most preferred first, e.g. [\"cu128\", \"cu126\"]",
        );
    }
    let mut seen = BTreeSet::new();
    for (i, tag) in torch.cuda.iter().enumerate() {
        if !seen.insert(*tag) {
            problems.add(format!("torch.cuda[{i}]"), format!("{tag} is listed twice: keep one"));
        } else if release.build_for(*tag, &torch.version.0).is_none() {
            problems.add(
                format!("torch.cuda[{i}]"),
                format!(
                    "{}: remove {tag}, or add it with a [[torch.release]] build",
                    release.missing_build(*tag, &torch.version.0)
                ),
            );
        }
    }
    let mut companions = BTreeSet::new();
    for (i, companion) in torch.companions.iter().enumerate() {
        if !companions.insert(companion) {
            problems.add(format!("torch.with[{i}]"), format!("`{companion}` is listed twice: keep one"));
        } else if !release.companions.contains_key(companion) {
            let known: Vec<&str> = release.companions.keys().map(String::as_str).collect();
            problems.add(
                format!("torch.with[{i}]"),
                format!(
                    "`{}` is not a companion of torch {series} (known: {}): install it as an optimization, or \
                     add it to the release's companions",
                    printable(companion),
                    known.join(", ")
                ),
            );
        }
    }
}

fn check_index(problems: &mut Problems, spec: &Spec) {
    let trusted = &spec.index.trusted_hosts;
    for (i, host) in trusted.iter().enumerate() {
        let ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
        if !ok {
            problems.add(
                format!("index.trusted_hosts[{i}]"),
                format!("`{}` is not a host name: write e.g. \"mirror.farm.internal\"", printable(host)),
            );
        }
    }
    problems.check("index.url", names::check_download_url(&spec.index.url, trusted));
    for (i, url) in spec.index.extra.iter().enumerate() {
        problems.check(format!("index.extra[{i}]"), names::check_download_url(url, trusted));
    }
}

fn check_optimization(problems: &mut Problems, path: &str, optimization: &Optimization, spec: &Spec) {
    problems.check(format!("{path}.name"), names::check_name(&optimization.name));
    if let Some(import) = &optimization.import {
        let ok = !import.is_empty()
            && import.split('.').all(|part| {
                part.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        if !ok {
            problems.add(
                format!("{path}.import"),
                format!("`{}` is not a Python module name: write e.g. \"sageattention\"", printable(import)),
            );
        }
    }
    if let Some(smoke) = &optimization.smoke {
        problems.check(format!("{path}.smoke.call"), smoke.check());
    }
    let mut requires = BTreeSet::new();
    for (i, requirement) in optimization.requires.iter().enumerate() {
        if !requires.insert(requirement) {
            problems
                .add(format!("{path}.requires[{i}]"), format!("`{requirement}` is listed twice: keep one"));
        }
    }
    match (&optimization.package, optimization.wheels.is_empty()) {
        (Some(_), false) => problems.add(
            format!("{path}.package"),
            "has both package and [[optimization.wheel]]: an optimization comes from the index (package) or from \
             prebuilt wheels, not both",
        ),
        (None, true) => problems.add(
            path,
            format!(
                "`{}` says neither where it comes from: write package = \"NAME\" (from the index) or add \
                 [[optimization.wheel]] tables",
                optimization.name
            ),
        ),
        (Some(package), true) => {
            problems.check(format!("{path}.package"), names::check_package_name(package));
            if names::normalize_package_name(package) == "triton" {
                check_triton_constraints(problems, path, optimization, spec);
            }
        }
        (None, false) => {
            if optimization.version.is_some() || !optimization.torch_constraints.is_empty() {
                problems.add(
                    format!("{path}.version"),
                    "version and torch_constraints apply to package optimizations; a wheel's version is in its file \
                     name",
                );
            }
            if optimization.smoke.is_none() {
                problems.add(
                    path,
                    format!(
                        "`{}` installs prebuilt kernels but names no smoke call, and importing a module proves nothing \
                         about its kernels: add smoke = {{ call = \"sageattention.sageattn\" }} (called with q, k, v \
                         on every GPU) or smoke = {{ call = \"package.selftest\", inputs = \"device\" }}",
                        optimization.name
                    ),
                );
            }
            check_wheels(problems, path, &optimization.wheels, spec);
        }
    }
}

/// torch's wheels require one exact triton, so a `torch_constraints` entry that
/// excludes it could never install: refused here, naming what torch requires,
/// rather than at the first lock.
fn check_triton_constraints(problems: &mut Problems, path: &str, optimization: &Optimization, spec: &Spec) {
    let Ok(catalog) = TorchCatalog::with_extensions(&spec.torch.releases) else { return };
    let torch = &spec.torch.version.0;
    for (series, constraint) in &optimization.torch_constraints {
        let Some(release) = catalog.release(*series) else { continue };
        let version = (TorchSeries::of(torch) == *series).then_some(torch);
        if let Err(why) = release.triton.check(&series.to_string(), version, constraint) {
            problems.add(
                format!("{path}.torch_constraints.{series}"),
                format!(
                    "{why}: write a constraint that admits it, or leave the entry out and comfyfleet pins the \
                     triton torch requires (if PyTorch changed it, correct the facts with a [[torch.release]] \
                     triton table)"
                ),
            );
        }
    }
}

fn check_wheels(problems: &mut Problems, path: &str, wheels: &[KernelWheel], spec: &Spec) {
    let trusted = &spec.index.trusted_hosts;
    let series = TorchSeries::of(&spec.torch.version.0);
    let mut distribution: Option<(usize, String)> = None;
    // Wheels a machine of this spec could be given, with their platforms.
    let mut candidates: Vec<(usize, &KernelWheel, Vec<String>)> = Vec::new();
    for (i, wheel) in wheels.iter().enumerate() {
        let wheel_path = format!("{path}.wheel[{i}]");
        if wheel.sha256.is_none() {
            problems.add(
                &wheel_path,
                "has no sha256: add sha256 = \"<64 hex digits>\" (from `sha256sum FILE`); comfyfleet installs no wheel \
                 it cannot verify",
            );
        }
        if let Err(message) = names::check_download_url(&wheel.url, trusted) {
            problems.add(format!("{wheel_path}.url"), message);
            continue;
        }
        if !wheel.python.serves(spec.python) {
            problems.add(
                format!("{wheel_path}.python"),
                format!(
                    "{} cannot be installed into the spec's Python {} venv: list a wheel for {}{}, or remove this one",
                    wheel.python,
                    spec.python,
                    spec.python.tag(),
                    if wheel.python.abi3 { "" } else { " (or a stable-ABI cp3X-abi3 wheel)" }
                ),
            );
        }
        let name = match WheelName::from_url(&wheel.url) {
            Err(message) => {
                problems.add(format!("{wheel_path}.url"), message);
                continue;
            }
            Ok(name) => name,
        };
        let interpreter = wheel.python.interpreter_tag();
        let agrees = if wheel.python.abi3 {
            name.python_tags.contains(&interpreter) && name.abi_tags.iter().any(|abi| abi == "abi3")
        } else {
            name.supports_python(&interpreter)
        };
        if !agrees {
            problems.add(
                format!("{wheel_path}.python"),
                format!(
                    "says {} but {} is built for {}-{}: make them agree",
                    wheel.python,
                    name.filename,
                    name.python_tags.join("."),
                    name.abi_tags.join(".")
                ),
            );
        }
        if !name.platform_tags.iter().any(|tag| tag == "any" || tag.contains("linux")) {
            problems.add(
                format!("{wheel_path}.url"),
                format!(
                    "{} is built for {}; comfyfleet agents run on Linux: list a linux wheel",
                    name.filename,
                    name.platform_tags.join(".")
                ),
            );
        }
        let normalized = names::normalize_package_name(&name.distribution);
        match &distribution {
            None => distribution = Some((i, normalized)),
            Some((first, expected)) if *expected != normalized => problems.add(
                format!("{wheel_path}.url"),
                format!(
                    "is a `{}` wheel but wheel[{first}] is `{expected}`: one optimization installs one package; split \
                     them into two [[optimization]]s",
                    name.distribution
                ),
            ),
            Some(_) => {}
        }
        if wheel.python.serves(spec.python) && wheel.torch.contains(series) {
            let platforms = ["x86_64", "aarch64"]
                .iter()
                .filter(|platform| name.supports_arch(platform))
                .map(|platform| (*platform).to_owned())
                .collect();
            candidates.push((i, wheel, platforms));
        }
    }
    // A machine must never match two wheels: among the wheels this spec's Python and
    // torch can use, those of one CUDA build and platform must not share an SM.
    for (i, j) in overlapping_wheels(&candidates) {
        let (wheel, earlier) = (&wheels[i], &wheels[j]);
        problems.add(
            format!("{path}.wheel[{i}].compute"),
            format!(
                "{} overlaps wheel[{j}] ({}) for the same {} and torch {series} on Python {}: a GPU must match one \
                 wheel; narrow the sets, e.g. \">=8.6,<8.9\" and \">=8.9,<9.0\", or list each SM once",
                wheel.compute, earlier.compute, wheel.cuda, spec.python
            ),
        );
    }
}

/// Pairs of wheels of one CUDA build and platform that share an SM, as `(later,
/// earlier)` list positions, at most one per later wheel; a spec with any overlap
/// gets at least one. A sweep over the wheels' intervals sorted by their low end: a
/// spec of n wheels costs O(n log n), not a pass over every pair (400 wheels took
/// 30 s that way, and each pair added a message).
fn overlapping_wheels(candidates: &[(usize, &KernelWheel, Vec<String>)]) -> Vec<(usize, usize)> {
    // (CUDA build, platform) → the SM intervals of its wheels: `[low, high)`, wheel.
    type Intervals = Vec<(u32, u32, usize)>;
    let mut groups: BTreeMap<(String, &str), Intervals> = BTreeMap::new();
    for (i, wheel, platforms) in candidates {
        for platform in platforms {
            let group = groups.entry((wheel.cuda.to_string(), platform.as_str())).or_default();
            group.extend(wheel.compute.ordinal_intervals().iter().map(|(low, high)| (*low, *high, *i)));
        }
    }
    let mut pairs: BTreeMap<usize, usize> = BTreeMap::new();
    for intervals in groups.values_mut() {
        intervals.sort_unstable();
        // The interval reaching furthest among those that start at or before the
        // current one: if any earlier interval overlaps the current one, this does.
        let mut reach: Option<(u32, usize)> = None;
        for &(low, high, owner) in intervals.iter() {
            if let Some((reach_high, reach_owner)) = reach
                && reach_high > low
                && reach_owner != owner
            {
                let (later, earlier) = (owner.max(reach_owner), owner.min(reach_owner));
                pairs.entry(later).and_modify(|first| *first = (*first).min(earlier)).or_insert(earlier);
            }
            if reach.is_none_or(|(reach_high, _)| high > reach_high) {
                reach = Some((high, owner));
            }
        }
    }
    pairs.into_iter().collect()
}

/// ComfyUI-Manager is chosen with run.manager, never by sneaking it in as a node or
/// an argument: a fleet must not drift because someone clicked "install".
fn check_manager(problems: &mut Problems, spec: &Spec) {
    for (i, node) in spec.custom_nodes.iter().enumerate() {
        if node.is_manager() && spec.run.manager.is_off() {
            problems.add(
                format!("custom_node[{i}]"),
                "is ComfyUI-Manager, but run.manager is \"off\": set run.manager = \"read-only\" (browse, install \
                 nothing) or \"on\" (installs shown as drift), or remove the node",
            );
        }
    }
    for (i, arg) in spec.run.args.iter().enumerate() {
        if ["--enable-manager", "--disable-manager-ui", "--enable-manager-legacy-ui"].contains(&arg.as_str())
        {
            problems.add(
                format!("run.args[{i}]"),
                format!("`{arg}` is set by run.manager = \"off\" | \"read-only\" | \"on\": remove it from run.args"),
            );
        }
    }
}

fn check_run(problems: &mut Problems, spec: &Spec, optimization_names: &BTreeSet<String>) {
    let run = &spec.run;
    if run.port == 0 {
        problems.add("run.port", "0 is not a port: write e.g. 8188");
    }
    if run.instances.is_some() && !run.instance.is_empty() {
        problems.add(
            "run.instances",
            "is set together with [[run.instance]]: keep one (the groups say which GPUs each ComfyUI sees)",
        );
    }
    let mut seen = BTreeSet::new();
    for (i, instance) in run.instance.iter().enumerate() {
        if instance.gpus.is_empty() {
            problems
                .add(format!("run.instance[{i}].gpus"), "is empty: list the GPU indices, e.g. gpus = [0, 1]");
        }
        for gpu in &instance.gpus {
            if !seen.insert(*gpu) {
                problems.add(
                    format!("run.instance[{i}].gpus"),
                    format!("GPU {gpu} is in two instances: each GPU renders for one ComfyUI"),
                );
            }
        }
    }
    if usize::from(run.port) + run.instance.len().max(1) > usize::from(u16::MAX) + 1 {
        problems.add("run.port", "leaves no room for one port per instance (run.port + its index)");
    }
    let check_args = |problems: &mut Problems, path: &str, args: &[String]| {
        for (i, arg) in args.iter().enumerate() {
            if arg.is_empty() || arg.len() > 1024 || arg.chars().any(char::is_control) {
                problems.add(
                    format!("{path}[{i}]"),
                    "is empty, too long or has control characters: ComfyUI arguments are single words such as \
                     \"--use-sage-attention\"",
                );
            } else if arg == "--port" || arg.starts_with("--port=") {
                problems.add(format!("{path}[{i}]"), "the port is set with run.port = 8188, not in args");
            }
        }
    };
    check_args(problems, "run.args", &run.args);
    for (name, args) in &run.when_verified {
        let path = format!("run.when_verified.{name}");
        if !optimization_names.contains(&names::normalize_package_name(name)) {
            let known: Vec<&str> = spec.optimizations.iter().map(|o| o.name.as_str()).collect();
            problems.add(
                &path,
                format!(
                    "`{}` is not an optimization of this spec (it has: {}): name one of them",
                    printable(name),
                    if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                ),
            );
        }
        check_args(problems, &path, args);
    }
}

fn check_rollout(problems: &mut Problems, spec: &Spec) {
    let rollout = &spec.rollout;
    for (key, amount) in
        [("max_unavailable", rollout.max_unavailable), ("max_parallel_prepare", rollout.max_parallel_prepare)]
    {
        if matches!(amount, Amount::Count(0) | Amount::Percent(0)) {
            problems.add(
                format!("rollout.{key}"),
                format!("{amount} would never let a machine through: write at least 1 (or a percentage, e.g. \"10%\")"),
            );
        }
    }
}

fn check_lock(problems: &mut Problems, spec: &Spec) {
    for (i, class) in spec.lock.classes.iter().enumerate() {
        problems
            .check(format!("lock.classes[{i}]"), crate::build_class::BuildClass::parse(class).map(|_| ()));
    }
    for (class, digest) in &spec.lock.digests {
        problems
            .check(format!("lock.digests.{class}"), crate::build_class::BuildClass::parse(class).map(|_| ()));
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            problems.add(
                format!("lock.digests.{class}"),
                "is not a lock digest (64 lowercase hex digits); leave `lock.digests` out: apply writes it",
            );
        }
    }
}
