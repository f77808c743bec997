//! The torch facts after 2.12 (config/data/torch-releases.toml), each shown through
//! the resolver with the source it rests on: what a machine gets, or why not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use comfyfleet_config::inventory::CudaVersion;
use comfyfleet_config::lock::BuildClass;
use comfyfleet_config::resolve::{MachineFacts, OptimizationSource, Resolution, Resolver, resolve};
use comfyfleet_config::spec::{Spec, SpecFormat};
use common::machine;

/// A spec of torch `version` on Python `python` allowing `cuda`, with torchvision,
/// and `extra` TOML appended.
fn spec(version: &str, python: &str, cuda: &str, extra: &str) -> Result<Spec, String> {
    let text = format!(
        r#"name = "facts"
python = "{python}"
[comfyui]
git = "https://github.com/comfyanonymous/ComfyUI.git"
ref = "v0.3.64"
[torch]
version = "{version}"
with = ["torchvision"]
cuda = ["{cuda}"]
{extra}"#
    );
    Spec::parse("facts.toml", &text, SpecFormat::Toml).map_err(|errors| errors.to_string())
}

/// "ok torch torchvision [index optimisations]" or "incompatible: why".
fn outcome(spec: &Spec, facts: &MachineFacts) -> String {
    match resolve(spec, facts) {
        Resolution::Planned(plan) => {
            let packages: Vec<String> =
                plan.packages.iter().map(|p| format!("{}=={}", p.name, p.version)).collect();
            let index: Vec<String> = plan
                .optimizations
                .iter()
                .filter_map(|o| match &o.source {
                    OptimizationSource::Index { requirement, .. } => Some(requirement.clone()),
                    OptimizationSource::Wheel { .. } => None,
                })
                .collect();
            format!("ok {} [{}]", packages.join(" "), index.join(" "))
        }
        Resolution::Incompatible(why) => format!("incompatible: {}", why.summary()),
        Resolution::NotTargeted => "not targeted".to_owned(),
    }
}

fn on_aarch64(mut facts: MachineFacts) -> MachineFacts {
    facts.arch = Some("aarch64".to_owned());
    facts
}

/// A GPU one SM generation past the newest the wheels have kernels for: covered only
/// through PTX.
fn next_generation_gpu(driver: &str, cuda: CudaVersion) -> MachineFacts {
    machine(&[("a GPU newer than every build (SM 13.0)", "13.0")], driver, cuda)
}

#[test]
fn release_wheels_of_2_12_to_2_14_carry_no_ptx() {
    // Source: pytorch/pytorch#188914 and #188925 — release/RC builds strip +PTX
    // ("RC / release `2.13.0+cu130` → `7.5;8.0;8.6;9.0;10.0;12.0`"), restoring the
    // pre-2.13 behaviour; the builds' sets are build_env_setup.py's table.
    let on_595 = next_generation_gpu("595.58.03", CudaVersion::new(13, 2));
    let table = [
        // 2.10's release/2.10 script still shipped 12.0+PTX: the newer GPU JITs it.
        ("2.10.0", "cu130", "ok torch==2.10.0+cu130 torchvision==0.25.0+cu130 []"),
        ("2.12.1", "cu130", "has kernels for SM 7.5, 8.0, 8.6, 9.0, 10.0, 12.0"),
        ("2.13.0", "cu130", "has kernels for SM 7.5, 8.0, 8.6, 9.0, 10.0, 12.0"),
        ("2.14.0", "cu132", "has kernels for SM 7.5, 8.0, 8.6, 9.0, 10.0, 12.0"),
    ];
    for (version, cuda, expected) in table {
        let got = outcome(&spec(version, "3.12", cuda, "").unwrap(), &on_595);
        assert!(got.contains(expected), "torch {version}+{cuda}: {got}");
        if expected.starts_with("has kernels") {
            assert!(got.starts_with("incompatible") && !got.contains("PTX"), "torch {version}+{cuda}: {got}");
        }
    }
    // aarch64 too: Jetson Thor (SM 11.0) keeps its cubins, a newer GPU has no PTX.
    let thor = on_aarch64(machine(&[("NVIDIA Thor", "11.0")], "580.00", CudaVersion::new(13, 0)));
    let spec_213 = spec("2.13.0", "3.12", "cu130", "").unwrap();
    assert!(outcome(&spec_213, &thor).starts_with("ok torch==2.13.0+cu130"), "{}", outcome(&spec_213, &thor));
    let newer_arm = on_aarch64(next_generation_gpu("580.95.05", CudaVersion::new(13, 0)));
    let got = outcome(&spec_213, &newer_arm);
    assert!(got.contains("has kernels for SM 8.0, 9.0, 10.0, 11.0, 12.0 on aarch64"), "{got}");
}

#[test]
fn cu129_came_back_in_2_12_1_and_2_13() {
    // Sources: pytorch/pytorch#185269 ("I think this was done for 2.12.1" — "Correct
    // here are the wheels"), so 2.12.0 has none; sgl-project/DeepGEMM#72 (2.13.0's
    // variants: cu126 / cu129 / cu130 / cu132).
    let rtx5090_on_575 = common::profile("rtx5090-x1-575");
    let planned = outcome(&spec("2.12.1", "3.12", "cu129", "").unwrap(), &rtx5090_on_575);
    assert_eq!(planned, "ok torch==2.12.1+cu129 torchvision==0.27.1+cu129 []");
    let planned = outcome(&spec("2.13.0", "3.12", "cu129", "").unwrap(), &rtx5090_on_575);
    assert_eq!(planned, "ok torch==2.13.0+cu129 torchvision==0.28.0+cu129 []");
    // A build of a patch release only: 2.12.0 is refused, saying which releases have it.
    let error = spec("2.12.0", "3.12", "cu129", "").unwrap_err();
    assert!(
        error.contains(
            "torch.cuda[0]: torch 2.12.0 has no cu129 build (it has cu126, cu130, cu132; cu129 is built for torch \
             >=2.12.1 only)"
        ),
        "{error}"
    );
    // No aarch64 cu129 wheel of 2.12.1 is shown by any source: not planned there.
    let gh200 = on_aarch64(machine(&[("NVIDIA GH200 480GB", "9.0")], "575.51.03", CudaVersion::new(12, 9)));
    let refused = outcome(&spec("2.12.1", "3.12", "cu129", "").unwrap(), &gh200);
    assert!(refused.contains("torch 2.12.1+cu129 has no wheel for aarch64 (only x86_64)"), "{refused}");
}

#[test]
fn cuda_13_2_builds_need_a_595_driver() {
    // Source: NVIDIA's "CUDA Toolkit and Corresponding Driver Versions": CUDA 13.2 GA
    // >=595.45.04, 13.2 Update 1 >=595.58.03 (cuda_13.2.0_595.45.04_linux.run).
    let b200_on_580 = machine(&[("NVIDIA B200", "10.0")], "580.95.05", CudaVersion::new(13, 0));
    let refused = outcome(&spec("2.12.1", "3.12", "cu132", "").unwrap(), &b200_on_580);
    assert!(
        refused.contains("driver 580.95.05 supports CUDA 13.0, older than every allowed build needs (cu132 needs CUDA 13.2 (driver ≥ 595.45.04))"),
        "{refused}"
    );
    let b200_on_595 = machine(&[("NVIDIA B200", "10.0")], "595.45.04", CudaVersion::new(13, 2));
    let planned = outcome(&spec("2.14.0", "3.12", "cu132", "").unwrap(), &b200_on_595);
    assert_eq!(planned, "ok torch==2.14.0+cu132 torchvision==0.29.0+cu132 []");
}

#[test]
fn torch_2_13_and_2_14_plan_python_3_10_to_3_14() {
    // Sources: the matrix row "<=(3.15, 3.15t experimental)" (pytorch/pytorch#187075),
    // but "We are not ready to officially release python 3.15 yet" (#187972), and for
    // 2.14 torchvision "isn't published for this version" (pytorch/test-infra#8710).
    for version in ["2.13.0", "2.14.0"] {
        let series = &version[..4];
        let error = spec(version, "3.15", "cu130", "").unwrap_err();
        assert!(
            error.contains(&format!("torch {series} has wheels for Python 3.10–3.14, not 3.15")),
            "{error}"
        );
        assert!(spec(version, "3.14", "cu130", "").is_ok(), "{version}");
    }
}

#[test]
fn aarch64_pins_torchvision_without_a_local_tag() {
    // Source: pytorch/vision#9330 — whl/cu130/torchvision/ has only untagged aarch64
    // wheels (`torchvision-0.24.1-cp312-cp312-manylinux_2_28_aarch64.whl`), CPU builds;
    // easybuild-easyconfigs#25329 pins the same beside `0.24.1+cu128` for x86_64.
    let gh200 = |cuda: CudaVersion| machine(&[("NVIDIA GH200 480GB", "9.0")], "580.95.05", cuda);
    let spec_212 = spec("2.12.1", "3.12", "cu130", "").unwrap();
    assert_eq!(
        outcome(&spec_212, &on_aarch64(gh200(CudaVersion::new(13, 0)))),
        "ok torch==2.12.1+cu130 torchvision==0.27.1 []"
    );
    assert_eq!(
        outcome(&spec_212, &gh200(CudaVersion::new(13, 0))),
        "ok torch==2.12.1+cu130 torchvision==0.27.1+cu130 []"
    );
    // The class's lock is made from the same pins.
    let resolver = Resolver::new(&spec_212);
    let arm = resolver.lock_inputs(&BuildClass::parse("cp312-cu130-linux_aarch64").unwrap()).unwrap();
    assert_eq!(arm.pins, ["torch==2.12.1+cu130", "torchvision==0.27.1"]);
    let x86 = resolver.lock_inputs(&BuildClass::parse("cp312-cu130-linux_x86_64").unwrap()).unwrap();
    assert_eq!(x86.pins, ["torch==2.12.1+cu130", "torchvision==0.27.1+cu130"]);
    // cu129 is the exception: pytorch/test-infra#7364 built aarch64 cu129 domain wheels.
    let spec_211 = spec("2.11.0", "3.12", "cu129", "").unwrap();
    assert_eq!(
        outcome(&spec_211, &on_aarch64(gh200(CudaVersion::new(12, 9)))),
        "ok torch==2.11.0+cu129 torchvision==0.26.0+cu129 []"
    );
}

const TRITON: &str = "[[optimization]]\nname = \"triton\"\npackage = \"triton\"\n";

#[test]
fn triton_comes_from_the_pin_each_torch_release_requires() {
    // Sources: pytorch/pytorch#186814 (2.12.0 → 3.7.0, 2.12.1 → 3.7.1),
    // intel/intel-xpu-backend-for-triton#7363 (2.13.0 → 3.7.1), Tavris1/ComfyUI-Easy-
    // Install#192 ("torch 2.11.0 requires triton==3.6.0").
    let h100 = common::profile("h100-x8-580");
    let table = [
        ("2.11.0", "ok torch==2.11.0+cu130 torchvision==0.26.0+cu130 [triton==3.6.0]"),
        ("2.12.0", "ok torch==2.12.0+cu130 torchvision==0.27.0+cu130 [triton==3.7.0]"),
        ("2.12.1", "ok torch==2.12.1+cu130 torchvision==0.27.1+cu130 [triton==3.7.1]"),
        // A patch release the facts have no pin for: the series' triton minor.
        ("2.12.2", "ok torch==2.12.2+cu130 torchvision==0.27.2+cu130 [triton==3.7.*]"),
        ("2.13.0", "ok torch==2.13.0+cu130 torchvision==0.28.0+cu130 [triton==3.7.1]"),
        // No source names 2.14's pin: nothing is added, torch's own requirement rules.
        ("2.14.0", "ok torch==2.14.0+cu130 torchvision==0.29.0+cu130 [triton]"),
    ];
    for (version, expected) in table {
        assert_eq!(
            outcome(&spec(version, "3.12", "cu130", TRITON).unwrap(), &h100),
            expected,
            "torch {version}"
        );
    }
    // A spec's own constraint that admits the pin is kept as written …
    let own = format!("{TRITON}torch_constraints = {{ \"2.12\" = \">=3.7,<3.8\" }}\n");
    let planned = outcome(&spec("2.12.1", "3.12", "cu130", &own).unwrap(), &h100);
    assert!(planned.ends_with("[triton>=3.7,<3.8]"), "{planned}");
    // … and the lock gets the same requirement as the plan.
    let spec_212 = spec("2.12.1", "3.12", "cu130", TRITON).unwrap();
    let inputs = Resolver::new(&spec_212)
        .lock_inputs(&BuildClass::parse("cp312-cu130-linux_x86_64").unwrap())
        .unwrap();
    assert_eq!(inputs.index_optimizations, [("triton==3.7.1".to_owned(), false)]);
}

#[test]
fn torch_constraints_that_contradict_the_triton_pin_are_refused() {
    // A table copied from an older torch: torch 2.12.1's wheels require triton==3.7.1
    // (pytorch/pytorch#186814), so `>=3.6,<3.7` could never install.
    let stale =
        format!("{TRITON}torch_constraints = {{ \"2.11\" = \">=3.6,<3.7\", \"2.12\" = \">=3.6,<3.7\" }}\n");
    let error = spec("2.12.1", "3.12", "cu130", &stale).unwrap_err();
    assert!(
        error.contains(
            "optimization[0].torch_constraints.2.12: torch 2.12.1 requires triton==3.7.1, which `>=3.6,<3.7` excludes"
        ),
        "{error}"
    );
    assert!(!error.contains("torch_constraints.2.11"), "2.11's entry is right: {error}");
    // An entry for another series is checked against that series' triton minor.
    let wrong_other =
        format!("{TRITON}torch_constraints = {{ \"2.12\" = \"==3.7.1\", \"2.9\" = \">=3.4,<3.5\" }}\n");
    let error = spec("2.12.1", "3.12", "cu130", &wrong_other).unwrap_err();
    assert!(
        error.contains("torch_constraints.2.9: every torch 2.9 release requires a triton 3.5.x, and `>=3.4,<3.5` admits none"),
        "{error}"
    );
    // Facts a spec corrects are what it is checked against.
    let corrected =
        format!("{stale}[[torch.release]]\nseries = \"2.12\"\ntriton = {{ \"2.12.1\" = \"3.6.9\" }}\n");
    assert!(spec("2.12.1", "3.12", "cu130", &corrected).is_ok());
}
