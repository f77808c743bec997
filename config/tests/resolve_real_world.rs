//! The resolver against what upstream really publishes: torch builds per series,
//! platform and Python (config/data/torch-releases.toml, each build citing its
//! source), NVIDIA's CUDA minor-version compatibility, and SageAttention's real
//! wheel shape (one stable-ABI wheel per CUDA build with a non-contiguous SM list).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use comfyfleet_config::inventory::CudaVersion;
use comfyfleet_config::resolve::{MachineFacts, OptimizationSource, Resolution, resolve};
use comfyfleet_config::spec::{DriverCompat, Spec, SpecFormat};
use common::{machine, profile};

/// A spec of torch `version` allowing `cuda`, with `extra` TOML appended.
fn spec(version: &str, python: &str, cuda: &str, extra: &str) -> Result<Spec, String> {
    let text = format!(
        r#"name = "real"
python = "{python}"
[comfyui]
git = "https://github.com/comfyanonymous/ComfyUI.git"
ref = "v0.3.64"
[torch]
version = "{version}"
with = ["torchvision"]
cuda = {cuda}
{extra}"#
    );
    Spec::parse("real.toml", &text, SpecFormat::Toml).map_err(|errors| errors.to_string())
}

fn plan_of(spec: &Spec, facts: &MachineFacts) -> Result<(String, DriverCompat), String> {
    match resolve(spec, facts) {
        Resolution::Planned(plan) => Ok((plan.torch.clone(), plan.driver_compat)),
        Resolution::Incompatible(why) => Err(why.summary()),
        Resolution::NotTargeted => Err("not targeted".into()),
    }
}

#[test]
fn torch_2_8_with_only_cu130_is_refused_naming_the_missing_build() {
    let error = spec("2.8.0", "3.12", r#"["cu130"]"#, "").unwrap_err();
    assert!(
        error.contains("torch.cuda[0]: torch 2.8 has no cu130 build (it has cu126, cu128, cu129)"),
        "{error}"
    );
    // 2.9 is the first series with CUDA 13.0.
    let spec = spec("2.9.0", "3.12", r#"["cu130"]"#, "").unwrap();
    assert_eq!(plan_of(&spec, &profile("h100-x8-580")).unwrap().0, "2.9.0+cu130");
    // cu129 exists for 2.8 (experimental) and for 2.9–2.11 (built after the tags).
    for version in ["2.8.0", "2.9.1", "2.10.0", "2.11.0"] {
        let spec = self::spec(version, "3.12", r#"["cu129"]"#, "").unwrap();
        assert_eq!(
            plan_of(&spec, &profile("rtx5090-x1-575")).unwrap().0,
            format!("{version}+cu129"),
            "the 575 driver supports CUDA 12.9"
        );
    }
    // 2.12 moved to cu126 / cu130 / cu132.
    let error = self::spec("2.12.0", "3.12", r#"["cu128"]"#, "").unwrap_err();
    assert!(error.contains("torch 2.12 has no cu128 build (it has cu126, cu130, cu132)"), "{error}");
}

#[test]
fn a_python_outside_the_series_range_is_refused() {
    let error = spec("2.8.0", "3.14", r#"["cu128"]"#, "").unwrap_err();
    assert!(error.contains("python: torch 2.8 has wheels for Python 3.9–3.13, not 3.14"), "{error}");
    let error = spec("2.11.0", "3.9", r#"["cu128"]"#, "").unwrap_err();
    assert!(error.contains("torch 2.11 has wheels for Python 3.10–3.14, not 3.9"), "{error}");
    // 2.13's matrix row says "<=(3.15, 3.15t experimental)", but no source shows cp315
    // wheels of it (pytorch/pytorch#187972 reverted advertising 3.15): not planned.
    let error = spec("2.13.0", "3.15", r#"["cu130"]"#, "").unwrap_err();
    assert!(error.contains("torch 2.13 has wheels for Python 3.10–3.14, not 3.15"), "{error}");
    assert!(spec("2.11.0", "3.14", r#"["cu128"]"#, "").is_ok());
}

#[test]
fn aarch64_machines_get_only_builds_with_aarch64_wheels_and_their_architectures() {
    let mut gh200 = machine(&[("NVIDIA GH200 480GB", "9.0")], "570.133.07", CudaVersion::new(12, 8));
    gh200.arch = Some("aarch64".into());
    // torch 2.8 published no aarch64 cu128 wheel; cu129 it did.
    let spec_28 = spec("2.8.0", "3.12", r#"["cu128", "cu126"]"#, "").unwrap();
    let refused = plan_of(&spec_28, &gh200).unwrap_err();
    assert!(refused.contains("cu128: torch 2.8.0+cu128 has no wheel for aarch64 (only x86_64)"), "{refused}");
    // From 2.9 the aarch64 cu126 wheel is 8.0/9.0 only: a T4 runs cu126 on x86_64, the
    // T4G of an ARM server (AWS g5g) does not (x86_64 lists say nothing about ARM).
    let spec_29 = spec("2.9.0", "3.12", r#"["cu126"]"#, "").unwrap();
    assert_eq!(plan_of(&spec_29, &gh200).unwrap().0, "2.9.0+cu126");
    let mut t4g = machine(&[("NVIDIA T4G", "7.5")], "570.133.07", CudaVersion::new(12, 8));
    assert_eq!(plan_of(&spec_29, &t4g).unwrap().0, "2.9.0+cu126", "x86_64 has sm_75");
    t4g.arch = Some("aarch64".into());
    let refused = plan_of(&spec_29, &t4g).unwrap_err();
    assert!(refused.contains("has kernels for SM 8.0, 9.0 on aarch64"), "{refused}");
    // Jetson Thor (SM 11.0) exists only in the aarch64 cu130 wheels.
    let mut thor = machine(&[("NVIDIA Thor", "11.0")], "580.00", CudaVersion::new(13, 0));
    thor.arch = Some("aarch64".into());
    let spec_210 = spec("2.10.0", "3.12", r#"["cu128", "cu130"]"#, "").unwrap();
    assert_eq!(plan_of(&spec_210, &thor).unwrap().0, "2.10.0+cu130");
}

#[test]
fn old_drivers_run_cu12x_builds_under_minor_compat_and_are_told_so_under_exact() {
    let exact = spec("2.11.0", "3.12", r#"["cu128", "cu126"]"#, "").unwrap();
    let minor = spec("2.11.0", "3.12", r#"["cu128", "cu126"]"#, "driver_compat = \"minor\"\n").unwrap();
    for name in ["t4-x1-535", "l40s-x2-550"] {
        let refused = plan_of(&exact, &profile(name)).unwrap_err();
        assert!(
            refused.contains(
                "would run cu128 or cu126 under CUDA minor-version compatibility: set torch.driver_compat = \"minor\""
            ),
            "{name}: {refused}"
        );
        assert_eq!(
            plan_of(&minor, &profile(name)).unwrap(),
            ("2.11.0+cu128".to_owned(), DriverCompat::Minor),
            "{name}"
        );
    }
    // A driver new enough for the build is an exact fit even under `minor`.
    assert_eq!(
        plan_of(&minor, &profile("rtx4090-x1-570")).unwrap(),
        ("2.11.0+cu128".to_owned(), DriverCompat::Exact)
    );
    // Minor compatibility does not cross majors, nor go below the major's floor.
    let cu130 = spec("2.11.0", "3.12", r#"["cu130"]"#, "driver_compat = \"minor\"\n").unwrap();
    let refused = plan_of(&cu130, &profile("l40s-x2-550")).unwrap_err();
    assert!(refused.contains("the driver's CUDA 12.4 is not CUDA 13.x"), "{refused}");
    let ancient = machine(&[("Tesla T4", "7.5")], "520.61.05", CudaVersion::new(12, 0));
    let refused = plan_of(&minor, &ancient).unwrap_err();
    assert!(refused.contains("CUDA 12.x needs driver ≥ 525.60.13 for it"), "{refused}");
    // Under `exact`, a machine minor would not help gets no hint.
    let refused = plan_of(&exact, &ancient).unwrap_err();
    assert!(!refused.contains("minor-version"), "{refused}");
}

#[test]
fn a_gpu_reached_only_through_ptx_still_needs_an_exact_driver() {
    // A build whose only code for SM 9.x is PTX compiled for 8.0.
    let release = r#"[[torch.release]]
series = "2.11"
  [[torch.release.build]]
  cuda = "cu128"
  driver_cuda = "12.8"
  arch = ["8.0"]
  ptx = ["8.0"]
"#;
    let ptx_only =
        spec("2.11.0", "3.12", r#"["cu128"]"#, &format!("driver_compat = \"minor\"\n{release}")).unwrap();
    let h100_on_550 = machine(&[("NVIDIA H100 80GB HBM3", "9.0")], "550.144.03", CudaVersion::new(12, 4));
    let refused = plan_of(&ptx_only, &h100_on_550).unwrap_err();
    assert!(
        refused.contains("GPU 0 (NVIDIA H100 80GB HBM3) is SM 9.0, which the build reaches only through PTX"),
        "{refused}"
    );
    // An SM 8.x GPU has a cubin and runs.
    let a100_on_550 = machine(&[("NVIDIA A100-SXM4-80GB", "8.0")], "550.144.03", CudaVersion::new(12, 4));
    assert_eq!(plan_of(&ptx_only, &a100_on_550).unwrap().1, DriverCompat::Minor);
    // With a driver that supports CUDA 12.8 the PTX is JIT-compiled: exact.
    let h100_on_570 = machine(&[("NVIDIA H100 80GB HBM3", "9.0")], "570.133.07", CudaVersion::new(12, 8));
    assert_eq!(plan_of(&ptx_only, &h100_on_570).unwrap().1, DriverCompat::Exact);
}

/// A spec with one real-shaped SageAttention wheel: stable ABI, torch 2.9 and later,
/// kernels for SM 8.0, 8.6, 8.9, 9.0 and 12.0.
fn fat_wheel_spec(python: &str, extra_wheel: &str) -> Result<Spec, String> {
    spec(
        "2.11.0",
        python,
        r#"["cu128"]"#,
        &format!(
            r#"[[optimization]]
name = "sageattention"
smoke = {{ call = "sageattention.sageattn" }}
  [[optimization.wheel]]
  compute = ["8.0", "8.6", "8.9", "9.0", "12.0"]
  python = "cp39-abi3"
  cuda = "cu128"
  torch = ">=2.9"
  url = "https://wheels.example/sageattention-2.2.0+cu128torch2.9.0andhigher.post4-cp39-abi3-linux_x86_64.whl"
  sha256 = "{sha}"
{extra_wheel}"#,
            sha = "ab".repeat(32)
        ),
    )
}

fn wheels_for(spec: &Spec, facts: &MachineFacts) -> Vec<String> {
    match resolve(spec, facts) {
        Resolution::Planned(plan) => plan
            .optimizations
            .iter()
            .filter_map(|o| match &o.source {
                OptimizationSource::Wheel { filename, .. } => Some(filename.clone()),
                OptimizationSource::Index { .. } => None,
            })
            .collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_fat_abi3_wheel_serves_every_python_and_every_box_whose_gpus_it_lists() {
    let on_570 = |gpus: &[(&str, &str)]| machine(gpus, "570.133.07", CudaVersion::new(12, 8));
    for python in ["3.11", "3.12", "3.13"] {
        let spec = fat_wheel_spec(python, "").unwrap();
        for gpus in [
            vec![("NVIDIA A100-SXM4-80GB", "8.0")],
            vec![("NVIDIA RTX A6000", "8.6")],
            vec![("NVIDIA GeForce RTX 4090", "8.9")],
            vec![("NVIDIA H100 80GB HBM3", "9.0")],
            vec![("NVIDIA GeForce RTX 5090", "12.0")],
            // A box mixing an 8.9 and a 12.0 GPU: both are in the one wheel.
            vec![("NVIDIA GeForce RTX 4090", "8.9"), ("NVIDIA GeForce RTX 5090", "12.0")],
        ] {
            let wheels = wheels_for(&spec, &on_570(&gpus));
            assert_eq!(wheels.len(), 1, "python {python}, {gpus:?}: {wheels:?}");
            assert!(wheels[0].ends_with("-cp39-abi3-linux_x86_64.whl"));
        }
        // Never for a 10.0 machine (B200), nor a box where one GPU is outside the list.
        let b200 = machine(&[("NVIDIA B200", "10.0")], "580.95.05", CudaVersion::new(13, 0));
        assert!(wheels_for(&spec, &b200).is_empty(), "python {python}");
        assert!(
            wheels_for(&spec, &on_570(&[("NVIDIA GeForce RTX 4090", "8.9"), ("NVIDIA L4", "8.7")]))
                .is_empty()
        );
    }
}

#[test]
fn wheels_are_checked_against_the_spec_at_validation() {
    let sha = "cd".repeat(32);
    // Two wheels a machine could both match: refused, so the resolver never has to choose.
    let overlapping = format!(
        r#"  [[optimization.wheel]]
  compute = ">=9.0,<10.0"
  python = "cp312"
  cuda = "cu128"
  torch = "2.11"
  url = "https://wheels.example/sm90/sageattention-2.2.0+cu128torch2.11-cp312-cp312-linux_x86_64.whl"
  sha256 = "{sha}"
"#
    );
    let error = fat_wheel_spec("3.12", &overlapping).unwrap_err();
    assert!(error.contains("optimization[0].wheel[1].compute: >=9.0,<10.0 overlaps wheel[0]"), "{error}");
    // A wheel whose own tag cannot serve the spec's Python is refused, not silently never picked.
    let error = fat_wheel_spec("3.12", &overlapping.replace("cp312", "cp311")).unwrap_err();
    assert!(error.contains("cp311 cannot be installed into the spec's Python 3.12 venv"), "{error}");
    let newer_abi3 = overlapping
        .replace("python = \"cp312\"", "python = \"cp313-abi3\"")
        .replace("cp312-cp312", "cp313-abi3")
        .replace(">=9.0,<10.0", "10.0");
    let error = fat_wheel_spec("3.12", &newer_abi3).unwrap_err();
    assert!(error.contains("cp313-abi3 cannot be installed into the spec's Python 3.12 venv"), "{error}");
    // The declared tag must be the file's.
    let lying =
        overlapping.replace(">=9.0,<10.0", "10.0").replace("python = \"cp312\"", "python = \"cp39-abi3\"");
    let error = fat_wheel_spec("3.12", &lying).unwrap_err();
    assert!(error.contains("says cp39-abi3 but sageattention-2.2.0+cu128torch2.11-cp312-cp312"), "{error}");
    // Wheels of other torch series may overlap: no machine of this spec can match them.
    let other_torch = overlapping.replace("torch = \"2.11\"", "torch = \"2.8\"");
    assert!(fat_wheel_spec("3.12", &other_torch).is_ok());
    // A kernel wheel must name its smoke call.
    let error = fat_wheel_spec("3.12", "").map(|_| ()).and_then(|()| {
        spec(
            "2.11.0",
            "3.12",
            r#"["cu128"]"#,
            &format!(
                "[[optimization]]\nname = \"sageattention\"\n  [[optimization.wheel]]\n  compute = \"8.9\"\n  python = \"cp39-abi3\"\n  cuda = \"cu128\"\n  torch = \">=2.9\"\n  url = \"https://wheels.example/sageattention-2.2.0-cp39-abi3-linux_x86_64.whl\"\n  sha256 = \"{sha}\"\n"
            ),
        )
        .map(|_| ())
    });
    assert!(error.unwrap_err().contains("names no smoke call"));
}
