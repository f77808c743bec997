//! The parsers against the real files of ComfyUI 0.3.64 and 0.33.0
//! (`tests/fixtures/real/`, read out of the tarballs with `tar`).

use std::path::PathBuf;

use super::*;
use crate::resolve::{MachineFacts, Resolution, Resolver};
use crate::spec::SpecFormat;

fn real(version: &str, path: &str) -> String {
    let tarball = match version {
        "0.3.64" => "comfyui-0.3.64-a125cd84.tar.gz",
        "0.33.0" => "comfyui-0.33.0-783545f6.tar.gz",
        other => panic!("no fixture of {other}"),
    };
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/real").join(tarball);
    let output = std::process::Command::new("tar")
        .arg("-xzOf")
        .arg(&file)
        .arg(format!("ComfyUI/{path}"))
        .output()
        .expect("tar runs");
    assert!(output.status.success(), "{}: {}", file.display(), String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn spec(python: &str, run: &str) -> Spec {
    let text = format!(
        "name = \"r\"\npython = \"{python}\"\n[comfyui]\ngit = \"https://github.com/c/ComfyUI\"\nref = \"v1\"\n\
         [torch]\nversion = \"2.11.0\"\ncuda = [\"cu130\", \"cu128\"]\n[run]\n{run}"
    );
    Spec::parse("spec.toml", &text, SpecFormat::Toml).unwrap()
}

#[test]
fn requires_python_is_read_from_the_real_pyprojects() {
    assert_eq!(requires_python(&real("0.33.0", "pyproject.toml")).as_deref(), Some(">=3.10"));
    assert_eq!(requires_python(&real("0.3.64", "pyproject.toml")).as_deref(), Some(">=3.9"));
    assert_eq!(requires_python("[project]\nname = \"x\"\n"), None);
    assert_eq!(requires_python("not toml ["), None);

    let py39 = PythonVersion { major: 3, minor: 9 };
    let refused = check_python(py39, ">=3.10").unwrap_err();
    assert!(refused.contains("python = \"3.9\"") && refused.contains(">=3.10"), "{refused}");
    check_python(py39, ">=3.9").unwrap();
    check_python(spec("3.12", "").python, ">=3.10").unwrap();
    assert!(check_python(py39, "=>3").unwrap_err().contains("does not parse"));
}

#[test]
fn options_are_read_from_the_real_cli_args() {
    let new = declared_options(&real("0.33.0", "comfy/cli_args.py"));
    let old = declared_options(&real("0.3.64", "comfy/cli_args.py"));
    // Multi-line calls, groups and short forms are all read.
    for option in ["--listen", "--enable-manager", "--disable-manager-ui", "--models-directory", "--highvram"]
    {
        assert!(new.contains(option), "0.33.0 lacks {option}: {new:?}");
    }
    assert!(!new.contains("--normalvram"), "0.33.0 removed --normalvram");
    assert!(old.contains("--normalvram") && old.contains("--listen") && !old.contains("--enable-manager"));
    assert!(new.len() > 90 && old.len() > 70, "{} {}", new.len(), old.len());
    assert!(new.iter().all(|option| option.starts_with('-')));

    let refused =
        check_arguments(&spec("3.12", "args = [\"--normalvram\", \"--preview-method\", \"auto\"]\n"), &new)
            .unwrap_err();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].contains("run.args: `--normalvram` is not an option of this ComfyUI commit"),
        "{refused:?}"
    );
    check_arguments(&spec("3.12", "args = [\"--normalvram\"]\n"), &old).unwrap();
    let verified = spec(
        "3.12",
        "[run.when_verified]\ntriton = [\"--use-sage-attention\", \"--disable-dynamic-vram\"]\n\
         [[optimization]]\nname = \"triton\"\npackage = \"triton\"\nrequires = [\"nvidia\", \"linux\"]\n",
    );
    let refused = check_arguments(&verified, &old).unwrap_err();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].starts_with("run.when_verified.triton: `--disable-dynamic-vram`"), "{refused:?}");
    check_arguments(&verified, &new).unwrap();
}

#[test]
fn comfy_kitchen_is_noted_below_cu130_for_the_real_033_requirements() {
    let new = real("0.33.0", "requirements.txt");
    let old = real("0.3.64", "requirements.txt");
    assert!(has_comfy_kitchen(&new) && !has_comfy_kitchen(&old));
    let spec = spec("3.12", "");
    let plan = |driver: &str, cuda: (u32, u32)| {
        let facts = MachineFacts {
            id: "m".to_owned(),
            hostname: "m".to_owned(),
            labels: Default::default(),
            os: Some("linux".to_owned()),
            arch: Some("x86_64".to_owned()),
            nvml_problem: None,
            driver_version: Some(driver.to_owned()),
            cuda_driver_version: Some(crate::CudaVersion::new(cuda.0, cuda.1)),
            gpus: vec![crate::machine_facts::GpuFacts {
                index: 0,
                name: Some("NVIDIA GeForce RTX 4090".to_owned()),
                compute_capability: Some("8.9".parse().unwrap()),
                memory_total_bytes: Some(1 << 34),
            }],
            reported: true,
            software: Default::default(),
        };
        match Resolver::new(&spec).resolve(&facts) {
            Resolution::Planned(plan) => *plan,
            other => panic!("{other:?}"),
        }
    };
    let cu128 = plan("570.86.10", (12, 8));
    assert_eq!(
        comfy_kitchen_note(&new, &cu128).as_deref(),
        Some("comfy-kitchen CUDA ops off: torch 2.11.0+cu128")
    );
    assert_eq!(comfy_kitchen_note(&old, &cu128), None);
    let cu130 = plan("580.65.06", (13, 0));
    assert_eq!(cu130.cuda_tag.to_string(), "cu130");
    assert_eq!(comfy_kitchen_note(&new, &cu130), None);
}

#[test]
fn the_manager_package_is_installed_only_when_the_manager_runs() {
    assert_eq!(real("0.33.0", MANAGER_REQUIREMENTS).trim(), "comfyui_manager==4.2.2");
    assert_eq!(requirement_files(ManagerMode::Off), vec![REQUIREMENTS]);
    assert_eq!(requirement_files(ManagerMode::ReadOnly), vec![REQUIREMENTS, MANAGER_REQUIREMENTS]);
    assert_eq!(requirement_files(ManagerMode::On), vec![REQUIREMENTS, MANAGER_REQUIREMENTS]);
}

#[test]
fn manager_on_beyond_loopback_is_warned_about() {
    let warned = |run: &str| warnings(&spec("3.12", run));
    assert!(warned("manager = \"on\"\n").is_empty());
    assert!(warned("manager = \"on\"\nargs = [\"--listen\", \"127.0.0.1,::1\"]\n").is_empty());
    assert!(warned("manager = \"read-only\"\nargs = [\"--listen\"]\n").is_empty());
    for args in [
        "[\"--listen\"]",
        "[\"--listen\", \"--preview-method\", \"auto\"]",
        "[\"--listen=10.0.0.5\"]",
        "[\"--listen\", \"0.0.0.0\"]",
    ] {
        let warning = warned(&format!("manager = \"on\"\nargs = {args}\n"));
        assert_eq!(warning.len(), 1, "{args}");
        assert!(warning[0].contains("network_mode is \"personal_cloud\""), "{}", warning[0]);
    }
}
