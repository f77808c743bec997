//! `comfyfleet facts check` against a stand-in torch index (download.pytorch.org's
//! layout, `whl/<cuda>/<package>/`, served over HTTP): an index that publishes what
//! the facts say passes; one that differs from them in three known ways gets
//! exactly those three printed and exit status 1; a spec's `[[torch.release]]`
//! additions are part of the facts checked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use comfyfleet_e2e::standin::server::IndexServer;
use comfyfleet_e2e::{CliOutput, cli, test_dir};

const PYTHONS: [u32; 5] = [10, 11, 12, 13, 14];
/// The first words of every difference line the command prints.
const KINDS: [&str; 9] = [
    "unknown series:",
    "unknown build:",
    "missing build:",
    "missing platform:",
    "unknown platform:",
    "missing wheel:",
    "missing Python:",
    "unplanned Python:",
    "unexpected wheel:",
];

/// One CUDA build of a torch release as PyTorch publishes it.
struct Build {
    cuda: &'static str,
    aarch64: bool,
    /// torchvision's aarch64 wheels carry the `+cuXXX` tag (only cu129's do).
    tagged_vision_on_arm: bool,
    torchaudio: bool,
}

const fn build(cuda: &'static str, aarch64: bool, tagged_vision_on_arm: bool, torchaudio: bool) -> Build {
    Build { cuda, aarch64, tagged_vision_on_arm, torchaudio }
}

/// Wheel file names per `whl/<cuda>/<package>/` page.
#[derive(Default)]
struct Index {
    pages: BTreeMap<(String, String), BTreeSet<String>>,
}

impl Index {
    fn add(&mut self, cuda: &str, package: &str, version: &str, platform: &str, pythons: &[u32]) {
        let page = self.pages.entry((cuda.to_owned(), package.to_owned())).or_default();
        for minor in pythons {
            page.insert(format!("{package}-{version}-cp3{minor}-cp3{minor}-manylinux_2_28_{platform}.whl"));
        }
    }

    fn remove(&mut self, cuda: &str, package: &str, pattern: &str) {
        let page = self.pages.get_mut(&(cuda.to_owned(), package.to_owned())).unwrap();
        let before = page.len();
        page.retain(|name| !name.contains(pattern));
        assert!(page.len() < before, "nothing matched {pattern}");
    }

    /// torch, torchvision, torchaudio and triton of one release, every build.
    fn release(&mut self, torch: &str, (vision, audio, triton): (&str, &str, &str), builds: &[Build]) {
        for build in builds {
            let cuda = build.cuda;
            let mut platforms = vec!["x86_64"];
            if build.aarch64 {
                platforms.push("aarch64");
            }
            for platform in platforms {
                self.add(cuda, "torch", &format!("{torch}+{cuda}"), platform, &PYTHONS);
                let vision_tagged = platform == "x86_64" || build.tagged_vision_on_arm;
                let vision = if vision_tagged { format!("{vision}+{cuda}") } else { vision.to_owned() };
                self.add(cuda, "torchvision", &vision, platform, &PYTHONS);
                if build.torchaudio {
                    self.add(cuda, "torchaudio", &format!("{audio}+{cuda}"), platform, &PYTHONS);
                }
                self.add(cuda, "triton", triton, platform, &PYTHONS);
            }
        }
    }

    /// Writes the pages as PEP 503 HTML under `root/whl/`.
    fn write(&self, root: &Path) {
        let _ = std::fs::remove_dir_all(root.join("whl"));
        for ((cuda, package), files) in &self.pages {
            let dir = root.join("whl").join(cuda).join(package);
            std::fs::create_dir_all(&dir).unwrap();
            let links: Vec<String> = files
                .iter()
                .map(|name| {
                    format!(
                        "<a href=\"/files/{}#sha256={}\">{name}</a><br/>",
                        name.replace('+', "%2B"),
                        "0".repeat(64)
                    )
                })
                .collect();
            let html = format!(
                "<!DOCTYPE html>\n<html><body>\n<h1>Links for {package}</h1>\n{}\n</body></html>\n",
                links.join("\n")
            );
            std::fs::write(dir.join("index.html"), html).unwrap();
        }
    }
}

/// What PyTorch publishes for torch 2.11.0 and 2.12.1, as the facts'
/// sources describe it (config/data/torch-releases.toml), written out by hand.
fn as_published() -> Index {
    let mut index = Index::default();
    index.release(
        "2.11.0",
        ("0.26.0", "2.11.0", "3.6.0"),
        &[
            build("cu126", true, false, true),
            build("cu128", true, false, true),
            build("cu129", true, true, true),
            build("cu130", true, false, true),
        ],
    );
    index.release(
        "2.12.1",
        ("0.27.1", "2.11.0", "3.7.1"),
        &[
            build("cu126", true, false, true),
            build("cu129", false, false, true),
            build("cu130", true, false, true),
            build("cu132", true, false, false),
        ],
    );
    index
}

fn facts_check(index_url: &str, extra: &[&str]) -> CliOutput {
    let mut args = vec!["facts", "check", "--index", index_url];
    args.extend_from_slice(extra);
    // No controller and no operator config: the check needs neither.
    cli(Path::new("/nonexistent/admin.toml"), &args)
}

fn differences(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|line| KINDS.iter().any(|kind| line.starts_with(kind))).collect()
}

#[test]
fn facts_check_prints_exactly_how_an_index_differs_from_the_facts() {
    let dir = test_dir();
    let server = IndexServer::start(dir.path());
    let url = format!("{}/whl", server.base_url());

    // What the facts say, published: nothing to report.
    let mut index = as_published();
    index.write(dir.path());
    let clean = facts_check(&url, &[]);
    let stdout = clean.stdout.clone();
    assert!(clean.status.success(), "{stdout}{}", clean.stderr);
    assert!(stdout.contains("compared torch 2.11.0, 2.12.1"), "{stdout}");
    assert!(
        stdout.contains("not published there (not compared): torch 2.7, 2.8, 2.9, 2.10, 2.13, 2.14"),
        "{stdout}"
    );
    assert!(stdout.ends_with("no differences\n"), "{stdout}");

    // Three differences: a build the facts do not know (2.11.0+cu132), a build the
    // facts claim that the index lacks (2.11.0+cu126), a Python tag missing (no cp314
    // torch 2.12.1+cu130 for x86_64).
    // (torchaudio 2.11.0 has no cu132 wheel, whichever torch it is paired with.)
    index.release("2.11.0", ("0.26.0", "2.11.0", "3.6.0"), &[build("cu132", true, false, false)]);
    index.remove("cu126", "torch", "torch-2.11.0+cu126-");
    index.remove("cu130", "torch", "torch-2.12.1+cu130-cp314-cp314-manylinux_2_28_x86_64");
    index.write(dir.path());
    let found = facts_check(&url, &[]);
    assert_eq!(found.status.code(), Some(1), "{}{}", found.stdout, found.stderr);
    assert_eq!(
        differences(&found.stdout),
        [
            "unknown build: torch 2.11.0+cu132 is published (aarch64, x86_64), but the facts have no cu132 build of \
             torch 2.11.0",
            "missing build: the facts say torch 2.11.0 has a cu126 build, but the index has no torch 2.11.0+cu126 \
             wheel",
            "missing Python: torch 2.12.1+cu130 has no cp314 wheel for x86_64, but the facts plan Python 3.10–3.14 \
             for it",
        ],
        "{}",
        found.stdout
    );
    assert!(found.stdout.contains("3 differences:"), "{}", found.stdout);
    assert!(found.stderr.is_empty(), "differences are the report, not an error: {}", found.stderr);

    // A spec that adds the cu132 build to 2.11 makes it known: two remain.
    let spec = dir.path().join("spec.toml");
    std::fs::write(
        &spec,
        r#"name = "facts"
python = "3.12"
[comfyui]
git = "https://github.com/comfyanonymous/ComfyUI.git"
ref = "v0.3.64"
[torch]
version = "2.11.0"
cuda = ["cu130"]

[[torch.release]]
series = "2.11"
  [[torch.release.build]]
  cuda = "cu132"
  driver_cuda = "13.2"
  arch = ["7.5", "8.0", "8.6", "9.0", "10.0", "12.0"]
  aarch64 = { arch = ["8.0", "9.0", "10.0", "11.0", "12.0"], untagged = ["torchvision"] }
  without = ["torchaudio"]
"#,
    )
    .unwrap();
    let with_spec = facts_check(&url, &["-f", spec.to_str().unwrap()]);
    assert_eq!(with_spec.status.code(), Some(1));
    let lines = differences(&with_spec.stdout);
    assert_eq!(lines.len(), 2, "{}", with_spec.stdout);
    assert!(lines.iter().all(|line| !line.contains("cu132")), "{}", with_spec.stdout);

    // An index that cannot be read is an error, not a report of differences.
    drop(server);
    let unreachable = facts_check(&url, &[]);
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(unreachable.stderr.contains("cannot read"), "{}", unreachable.stderr);
}
