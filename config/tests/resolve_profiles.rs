//! The resolver over the machine profiles in tests/fixtures/gpu-profiles.json (real
//! NVML facts) and the example render-farm spec: table tests of what each machine
//! gets, or the fact that rules it out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use comfyfleet_config::inventory::CudaVersion;
use comfyfleet_config::resolve::{OptimizationSource, Resolution, resolve};
use comfyfleet_config::spec::{DriverCompat, Spec, SpecFormat};

mod common;

use common::profile;

const EXAMPLE: &str = include_str!("../examples/render-farm.toml");
fn example() -> Spec {
    Spec::parse("render-farm.toml", EXAMPLE, SpecFormat::Toml).unwrap()
}

/// The example spec with `edit` applied to its TOML text.
fn example_with(edit: impl Fn(&str) -> String) -> Spec {
    let text = edit(EXAMPLE);
    Spec::parse("edited.toml", &text, SpecFormat::Toml).unwrap_or_else(|err| panic!("{err}"))
}

fn describe(resolution: &Resolution) -> String {
    match resolution {
        Resolution::Planned(plan) => {
            let wheels: Vec<String> = plan
                .optimizations
                .iter()
                .map(|o| match &o.source {
                    OptimizationSource::Wheel { url, .. } => {
                        let dir = url.rsplit('/').nth(1).unwrap();
                        format!("{}@{dir}", o.name)
                    }
                    OptimizationSource::Index { requirement, .. } => requirement.clone(),
                })
                .collect();
            let minor = if plan.driver_compat == DriverCompat::Minor { " minor" } else { "" };
            format!("ok {}{minor} [{}]", plan.torch, wheels.join(" "))
        }
        Resolution::Incompatible(why) => format!("incompatible: {}", why.summary()),
        Resolution::NotTargeted => "not-targeted".to_owned(),
    }
}

const CUDA_PREFERENCE: &str = r#"cuda = ["cu130", "cu128", "cu126"]"#;

#[test]
fn every_profile_gets_the_build_its_driver_and_gpus_allow() {
    let spec = example();
    let table = [
        ("h100-x8-580", "ok 2.11.0+cu130 [sageattention@sageattention triton>=3.6,<3.7]"),
        ("a100-x4-570", "ok 2.11.0+cu128 [sageattention@sageattention triton>=3.6,<3.7]"),
        ("rtx4090-x1-570", "ok 2.11.0+cu128 [sageattention@sageattention triton>=3.6,<3.7]"),
        (
            "rtx5090-x1-575",
            "ok 2.11.0+cu128 [sageattention@sageattention sageattention3@sm120 triton>=3.6,<3.7]",
        ),
        ("gtx1080ti-x1-570", "ok 2.11.0+cu126 [triton>=3.6,<3.7]"),
        ("v100-x2-560", "ok 2.11.0+cu126 [triton>=3.6,<3.7]"),
        // One fat wheel holds both SMs of the mixed box.
        ("mixed-4090-a6000-570", "ok 2.11.0+cu128 [sageattention@sageattention triton>=3.6,<3.7]"),
    ];
    for (name, expected) in table {
        assert_eq!(describe(&resolve(&spec, &profile(name))), expected, "{name}");
    }
}

#[test]
fn plans_pin_companions_indexes_and_arguments() {
    let spec = example();
    let resolution = resolve(&spec, &profile("rtx4090-x1-570"));
    let plan = resolution.plan().unwrap();
    let packages: Vec<String> = plan.packages.iter().map(|p| format!("{}=={}", p.name, p.version)).collect();
    assert_eq!(packages, ["torch==2.11.0+cu128", "torchvision==0.26.0+cu128", "torchaudio==2.11.0+cu128"]);
    assert_eq!(plan.torch_index, "https://download.pytorch.org/whl/cu128");
    assert_eq!(plan.python_tag, "cp312");
    assert_eq!(plan.driver_compat, DriverCompat::Exact);
    let sage = &plan.optimizations[0];
    assert_eq!(
        (sage.name.as_str(), sage.version.as_str()),
        ("sageattention", "2.2.0+cu128torch2.9.0andhigher.post4")
    );
    assert_eq!(sage.smoke.as_ref().unwrap().call, "sageattention.sageattn", "the verify step's call travels");
    match &sage.source {
        OptimizationSource::Wheel { sha256, filename, .. } => {
            assert_eq!(sha256, "ba95d15994cfd41f2fef95ee5ae5ffc25ea92c70db284702a65a47554e9b898e");
            assert!(filename.ends_with("-cp39-abi3-linux_x86_64.whl"), "{filename}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(plan.comfyui_args_when_verified["sageattention"], ["--use-sage-attention"]);
    // A Pascal card has no SageAttention wheel: the argument that needs it is not planned.
    let pascal = resolve(&spec, &profile("gtx1080ti-x1-570"));
    let plan = pascal.plan().unwrap();
    assert!(plan.comfyui_args_when_verified.is_empty());
    assert!(
        plan.skipped
            .iter()
            .any(|s| s.name == "sageattention" && s.reason.contains("no wheel for cp312, cu126")),
        "{plan:?}"
    );
}

#[test]
fn a_pascal_card_gets_cu126_or_is_refused_when_cu126_is_not_allowed() {
    assert!(describe(&resolve(&example(), &profile("gtx1080ti-x1-570"))).starts_with("ok 2.11.0+cu126"));
    let without = example_with(|text| text.replace(CUDA_PREFERENCE, r#"cuda = ["cu128", "cu130"]"#));
    let refused = describe(&resolve(&without, &profile("gtx1080ti-x1-570")));
    assert!(refused.starts_with("incompatible"), "{refused}");
    assert!(refused.contains("GPU 0 (NVIDIA GeForce GTX 1080 Ti) is SM 6.1"), "{refused}");
}

#[test]
fn an_rtx_5090_never_gets_cu126() {
    let only_126 = example_with(|text| text.replace(CUDA_PREFERENCE, r#"cuda = ["cu126", "cu128"]"#));
    assert!(describe(&resolve(&only_126, &profile("rtx5090-x1-575"))).starts_with("ok 2.11.0+cu128"));
    let refused = example_with(|text| text.replace(CUDA_PREFERENCE, r#"cuda = ["cu126"]"#));
    let outcome = describe(&resolve(&refused, &profile("rtx5090-x1-575")));
    assert!(outcome.contains("GPU 0 (NVIDIA GeForce RTX 5090) is SM 12.0"), "{outcome}");
}

#[test]
fn a_535_driver_is_refused_naming_the_driver() {
    let outcome = describe(&resolve(&example(), &profile("t4-x1-535")));
    assert!(outcome.starts_with("incompatible"), "{outcome}");
    assert!(
        outcome.contains("driver 535.230.02 supports CUDA 12.2, older than every allowed build needs"),
        "{outcome}"
    );
    assert!(outcome.contains("cu128 needs CUDA 12.8 (driver ≥ 570.26)"), "{outcome}");
    let l40s = describe(&resolve(&example(), &profile("l40s-x2-550")));
    assert!(l40s.contains("driver 550.144.03 supports CUDA 12.4"), "{l40s}");
}

#[test]
fn a_v100_with_only_cu128_is_refused_naming_sm_7_0() {
    let spec = example_with(|text| text.replace(CUDA_PREFERENCE, r#"cuda = ["cu128"]"#));
    let outcome = describe(&resolve(&spec, &profile("v100-x2-560")));
    assert!(outcome.starts_with("incompatible"), "{outcome}");
    // The 560 driver supports CUDA 12.6 only; give it a 570 driver so the GPU is what rules it out.
    let mut v100 = profile("v100-x2-560");
    v100.driver_version = Some("570.133.07".into());
    v100.cuda_driver_version = Some(CudaVersion::new(12, 8));
    let refused = describe(&resolve(&spec, &v100));
    assert!(refused.contains("GPUs 0–1 (Tesla V100-SXM2-32GB) are SM 7.0"), "{refused}");
    assert!(refused.contains("torch 2.11.0+cu128 has kernels for SM 7.5, 8.0"), "{refused}");
}

#[test]
fn machines_without_usable_gpus_say_why() {
    let everyone = example_with(|text| {
        text.replace("selector = 'gpu.compute >= 6.0 && labels.pool != \"staging\"'", "")
    });
    assert_eq!(
        describe(&resolve(&everyone, &profile("no-gpu"))),
        "incompatible: no NVIDIA GPU (no NVIDIA library)"
    );
    // With the example's selector, a machine without GPUs is simply not targeted.
    assert_eq!(describe(&resolve(&example(), &profile("no-gpu"))), "not-targeted");
    let mut unreadable = profile("rtx4090-x1-570");
    unreadable.gpus[0].compute_capability = None;
    assert_eq!(
        describe(&resolve(&everyone, &unreadable)),
        "incompatible: GPU 0 (NVIDIA GeForce RTX 4090): compute capability unreadable"
    );
    let mut silent = profile("rtx4090-x1-570");
    silent.reported = false;
    assert_eq!(
        describe(&resolve(&everyone, &silent)),
        "incompatible: the machine has not reported its hardware yet"
    );
}

#[test]
fn a_fatal_optimisation_that_cannot_be_planned_fails_the_machine() {
    let fatal = example_with(|text| text.replacen("fatal = false", "fatal = true", 1));
    // Pascal has no SageAttention wheel under any CUDA build.
    let outcome = describe(&resolve(&fatal, &profile("gtx1080ti-x1-570")));
    assert!(outcome.starts_with("incompatible"), "{outcome}");
    assert!(outcome.contains("cu126: fatal optimization sageattention cannot be installed"), "{outcome}");
    // A box with a wheel is unaffected.
    assert!(
        describe(&resolve(&fatal, &profile("rtx4090-x1-570")))
            .starts_with("ok 2.11.0+cu128 [sageattention@sageattention")
    );
}

#[test]
fn a_fatal_optimisation_moves_the_machine_to_the_next_cuda_build_that_has_it() {
    // No cu130 SageAttention wheel: the H100 prefers cu130 but must take cu128 to get it.
    let fatal = EXAMPLE.replacen("fatal = false", "fatal = true", 1);
    let cu130_wheel = "  python = \"cp39-abi3\"\n  cuda = \"cu130\"\n  torch = \">=2.9\"";
    assert!(fatal.contains(cu130_wheel));
    let no_cu130 =
        fatal.replacen(cu130_wheel, "  python = \"cp39-abi3\"\n  cuda = \"cu129\"\n  torch = \">=2.9\"", 1);
    let spec = Spec::parse("spec.toml", &no_cu130, SpecFormat::Toml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        describe(&resolve(&spec, &profile("h100-x8-580"))),
        "ok 2.11.0+cu128 [sageattention@sageattention triton>=3.6,<3.7]"
    );
}

#[test]
fn unmet_requirements_drop_the_optimisation_and_wheels_match_the_platform() {
    let mut arm = profile("h100-x8-580");
    arm.arch = Some("aarch64".into());
    let resolution = resolve(&example(), &arm);
    let plan = resolution.plan().unwrap();
    assert_eq!(plan.torch, "2.11.0+cu130", "torch 2.11 has aarch64 wheels");
    // The x86_64 wheels do not fit an aarch64 host.
    let sage = plan.skipped.iter().find(|s| s.name == "sageattention").unwrap();
    assert!(sage.reason.contains("no wheel for cp312, cu130, torch 2.11 and aarch64"), "{}", sage.reason);
    let x86_only = example_with(|text| {
        text.replace(
            "name = \"triton\"\npackage = \"triton\"\nrequires = [\"nvidia\", \"linux\"]",
            "name = \"triton\"\npackage = \"triton\"\nrequires = [\"nvidia\", \"linux\", \"x86_64\"]",
        )
    });
    let resolution = resolve(&x86_only, &arm);
    let skipped = &resolution.plan().unwrap().skipped;
    assert!(skipped.iter().any(|s| s.name == "triton" && s.reason == "requires x86_64"), "{skipped:?}");
}

#[test]
fn a_spec_can_teach_the_resolver_a_new_torch_release() {
    let unknown = EXAMPLE.replace("version = \"2.11.0\"", "version = \"2.99.0\"");
    let error = Spec::parse("spec.toml", &unknown, SpecFormat::Toml).unwrap_err().to_string();
    assert!(error.contains("comfyfleet has no build facts for torch 2.99"), "{error}");
    assert!(error.contains("add a [[torch.release]] with series = \"2.99\""), "{error}");
    let taught = unknown.replace(CUDA_PREFERENCE, "cuda = [\"cu130\"]").replacen(
        "[index]",
        "[[torch.release]]\nseries = \"2.99\"\npython_min = \"3.10\"\npython_max = \"3.15\"\ncompanions = { torchvision = \"0.114\", torchaudio = \"2.11.0\" }\n  [[torch.release.build]]\n  cuda = \"cu130\"\n  driver_cuda = \"13.0\"\n  min_driver = \"580.65.06\"\n  arch = [\"8.0\", \"9.0\", \"10.0\", \"12.0\"]\n\n[index]",
        1,
    );
    let taught = taught.replace("torch = \"2.11\"", "torch = \"2.99\"");
    let spec = Spec::parse("spec.toml", &taught, SpecFormat::Toml).unwrap_or_else(|e| panic!("{e}"));
    let h100 = resolve(&spec, &profile("h100-x8-580"));
    let plan = h100.plan().unwrap();
    assert_eq!(plan.torch, "2.99.0+cu130");
    assert_eq!(plan.packages[1].version, "0.114.0+cu130");
    assert_eq!(plan.packages[2].version, "2.11.0+cu130", "an exact companion stays where it is");
    // Its only build needs CUDA 13.0: a 570 driver cannot run it.
    let refused = describe(&resolve(&spec, &profile("rtx4090-x1-570")));
    assert!(refused.contains("driver 570.133.07 supports CUDA 12.8"), "{refused}");
}

#[test]
fn a_build_can_come_from_its_own_index() {
    let spec = example_with(|text| {
        text.replace(
            "index = \"https://download.pytorch.org/whl/{cuda}\"",
            "index = \"https://download.pytorch.org/whl/{cuda}\"\nindexes = { cu126 = \"https://mirror.farm.example/torch-cu126/simple\" }",
        )
    });
    let pascal = resolve(&spec, &profile("gtx1080ti-x1-570"));
    assert_eq!(pascal.plan().unwrap().torch_index, "https://mirror.farm.example/torch-cu126/simple");
    let ada = resolve(&spec, &profile("rtx4090-x1-570"));
    assert_eq!(ada.plan().unwrap().torch_index, "https://download.pytorch.org/whl/cu128");
}
