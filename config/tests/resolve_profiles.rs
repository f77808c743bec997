//! The resolver over the machine profiles in tests/fixtures/gpu-profiles.json (real
//! NVML facts) and the example render-farm spec: table tests of what each machine
//! gets, or the fact that rules it out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use comfyfleet_config::inventory::{ComputeCapability, CudaVersion};
use comfyfleet_config::resolve::{GpuFacts, MachineFacts, OptimizationSource, Resolution, resolve};
use comfyfleet_config::spec::{Spec, SpecFormat};

const EXAMPLE: &str = include_str!("../examples/render-farm.toml");
const PROFILES: &str = include_str!("../../tests/fixtures/gpu-profiles.json");

fn profile(name: &str) -> MachineFacts {
    let profiles: serde_json::Value = serde_json::from_str(PROFILES).unwrap();
    let profile = &profiles["profiles"][name];
    assert!(profile.is_object(), "no profile {name}");
    let mut gpus = Vec::new();
    for group in profile["gpus"].as_array().unwrap() {
        let cc = group["compute_capability"].as_array().unwrap();
        for _ in 0..group["count"].as_u64().unwrap() {
            gpus.push(GpuFacts {
                index: gpus.len() as u32,
                name: Some(group["name"].as_str().unwrap().to_owned()),
                compute_capability: Some(ComputeCapability::new(
                    cc[0].as_u64().unwrap() as u32,
                    cc[1].as_u64().unwrap() as u32,
                )),
                memory_total_bytes: group["memory_total_bytes"].as_u64(),
            });
        }
    }
    MachineFacts {
        id: name.to_owned(),
        hostname: name.to_owned(),
        labels: BTreeMap::from([("pool".to_owned(), "render-a".to_owned())]),
        os: Some("Debian GNU/Linux 13 (trixie)".to_owned()),
        arch: Some("x86_64".to_owned()),
        nvml_problem: gpus.is_empty().then(|| "no NVIDIA library".to_owned()),
        driver_version: profile["driver_version"].as_str().map(str::to_owned),
        cuda_driver_version: profile["cuda_driver_version"]
            .as_u64()
            .map(|v| CudaVersion::from_nvml(v as u32).unwrap()),
        gpus,
        reported: true,
    }
}

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
            format!("ok {} [{}]", plan.torch, wheels.join(" "))
        }
        Resolution::Incompatible(why) => format!("incompatible: {}", why.summary()),
        Resolution::NotTargeted => "not-targeted".to_owned(),
    }
}

#[test]
fn every_profile_gets_the_build_its_driver_and_gpus_allow() {
    let spec = example();
    let table = [
        ("h100-x8-580", "ok 2.8.0+cu128 [sageattention@sm90 triton>=3.4,<3.5]"),
        ("a100-x4-570", "ok 2.8.0+cu128 [sageattention@sm80 triton>=3.4,<3.5]"),
        ("rtx4090-x1-570", "ok 2.8.0+cu128 [sageattention@sm89 triton>=3.4,<3.5]"),
        ("rtx5090-x1-575", "ok 2.8.0+cu128 [sageattention3@sageattention3 triton>=3.4,<3.5]"),
        ("gtx1080ti-x1-570", "ok 2.8.0+cu126 [triton>=3.4,<3.5]"),
        ("v100-x2-560", "ok 2.8.0+cu126 [triton>=3.4,<3.5]"),
        ("mixed-4090-a6000-570", "ok 2.8.0+cu128 [triton>=3.4,<3.5]"),
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
    assert_eq!(packages, ["torch==2.8.0+cu128", "torchvision==0.23.0+cu128", "torchaudio==2.8.0+cu128"]);
    assert_eq!(plan.torch_index, "https://download.pytorch.org/whl/cu128");
    assert_eq!(plan.python_tag, "cp312");
    let sage = &plan.optimizations[0];
    assert_eq!((sage.name.as_str(), sage.version.as_str()), ("sageattention", "2.2.0+cu128torch2.8"));
    match &sage.source {
        OptimizationSource::Wheel { sha256, filename, .. } => {
            assert_eq!(sha256, "f34c50a231a45bfa8194ac24c8e451ecfe1a5bd4af9b2fb42323f3a66bd12e7c");
            assert!(filename.starts_with("sageattention-2.2.0+cu128torch2.8-cp312"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(plan.comfyui_args_when_verified["sageattention"], ["--use-sage-attention"]);
    // The 5090 has no SageAttention 2 wheel: the argument that needs it is not planned.
    let blackwell = resolve(&spec, &profile("rtx5090-x1-575"));
    let plan = blackwell.plan().unwrap();
    assert!(plan.comfyui_args_when_verified.is_empty());
    assert!(
        plan.skipped.iter().any(|s| s.name == "sageattention" && s.reason.contains("SM 12.0")),
        "{plan:?}"
    );
}

#[test]
fn a_pascal_card_gets_cu126_or_is_refused_when_cu126_is_not_allowed() {
    let with_126 = example();
    assert!(describe(&resolve(&with_126, &profile("gtx1080ti-x1-570"))).starts_with("ok 2.8.0+cu126"));
    let without = example_with(|text| {
        text.replace(r#"cuda = ["cu128", "cu126", "cu130"]"#, r#"cuda = ["cu128", "cu130"]"#)
    });
    let refused = describe(&resolve(&without, &profile("gtx1080ti-x1-570")));
    assert!(refused.starts_with("incompatible"), "{refused}");
    assert!(refused.contains("GPU 0 (NVIDIA GeForce GTX 1080 Ti) is SM 6.1"), "{refused}");
}

#[test]
fn an_rtx_5090_never_gets_cu126() {
    let only_126 = example_with(|text| {
        text.replace(r#"cuda = ["cu128", "cu126", "cu130"]"#, r#"cuda = ["cu126", "cu128"]"#)
    });
    assert!(describe(&resolve(&only_126, &profile("rtx5090-x1-575"))).starts_with("ok 2.8.0+cu128"));
    let refused =
        example_with(|text| text.replace(r#"cuda = ["cu128", "cu126", "cu130"]"#, r#"cuda = ["cu126"]"#));
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
    let l40s = super_outcome("l40s-x2-550");
    assert!(l40s.contains("driver 550.144.03 supports CUDA 12.4"), "{l40s}");
}

fn super_outcome(name: &str) -> String {
    describe(&resolve(&example(), &profile(name)))
}

#[test]
fn a_mixed_box_gets_only_wheels_valid_for_both_sms() {
    // Per-SM wheels: none covers both SM 8.9 and SM 8.6, so SageAttention is left out
    // (never the 8.9 wheel for a box that also has an 8.6 GPU).
    let per_sm = resolve(&example(), &profile("mixed-4090-a6000-570"));
    let plan = per_sm.plan().unwrap();
    let skipped = plan.skipped.iter().find(|s| s.name == "sageattention").unwrap();
    assert!(skipped.reason.contains("SM 8.9") && skipped.reason.contains("SM 8.6"), "{}", skipped.reason);
    // A wheel built for both (sm86 cubins run on sm89) is chosen for the mixed box.
    let sm89_cu128 =
        "  [[optimization.wheel]]\n  compute = \">=8.9,<9.0\"\n  python = \"cp312\"\n  cuda = \"cu128\"";
    let fat = example_with(|text| {
        assert!(text.contains(sm89_cu128));
        let text = text.replacen(
            sm89_cu128,
            "  [[optimization.wheel]]\n  compute = \">=8.9,<9.0\"\n  python = \"cp311\"\n  cuda = \"cu128\"",
            1,
        );
        let text = text.replace(
            "sm89/sageattention-2.2.0+cu128torch2.8-cp312-cp312",
            "sm89/sageattention-2.2.0+cu128torch2.8-cp311-cp311",
        );
        text.replacen(r#"compute = ">=8.6,<8.9""#, r#"compute = ">=8.6,<9.0""#, 1)
    });
    let mixed = resolve(&fat, &profile("mixed-4090-a6000-570"));
    assert_eq!(describe(&mixed), "ok 2.8.0+cu128 [sageattention@sm86 triton>=3.4,<3.5]");
    // The single-GPU boxes still get their own SM's wheel.
    assert_eq!(
        describe(&resolve(&fat, &profile("rtx4090-x1-570"))),
        "ok 2.8.0+cu128 [sageattention@sm86 triton>=3.4,<3.5]"
    );
}

#[test]
fn a_v100_with_torch_2_11_and_only_cu128_is_refused_naming_sm_7_0() {
    let spec = example_with(|text| {
        text.replace(r#"version = "2.8.0""#, r#"version = "2.11.0""#)
            .replace(r#"cuda = ["cu128", "cu126", "cu130"]"#, r#"cuda = ["cu128"]"#)
    });
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
    // The mixed box has no SageAttention wheel covering both SMs under any CUDA build.
    let outcome = describe(&resolve(&fatal, &profile("mixed-4090-a6000-570")));
    assert!(outcome.starts_with("incompatible"), "{outcome}");
    assert!(outcome.contains("cu128: fatal optimization sageattention cannot be installed"), "{outcome}");
    assert!(outcome.contains("SM 8.9") && outcome.contains("SM 8.6"), "{outcome}");
    // A box with a wheel is unaffected.
    assert!(
        describe(&resolve(&fatal, &profile("rtx4090-x1-570")))
            .starts_with("ok 2.8.0+cu128 [sageattention@sm89")
    );
}

#[test]
fn a_fatal_optimisation_moves_the_machine_to_the_next_cuda_build_that_has_it() {
    // Only a cu126 wheel for SM 9.0: the H100 prefers cu128 but must take cu126 to get it.
    let text = EXAMPLE.replace(
        "[[optimization]]\nname = \"sageattention\"\nrequires = [\"nvidia\", \"linux\"]\nfatal = false",
        "[[optimization]]\nname = \"sageattention\"\nrequires = [\"nvidia\", \"linux\"]\nfatal = true",
    );
    assert_ne!(text, EXAMPLE);
    let only_cu126_for_sm90 = text
        .replacen(
            "  compute = \">=9.0,<10.0\"\n  python = \"cp312\"\n  cuda = \"cu128\"",
            "  compute = \">=9.0,<10.0\"\n  python = \"cp311\"\n  cuda = \"cu128\"",
            1,
        )
        .replace(
            "sm90/sageattention-2.2.0+cu128torch2.8-cp312-cp312",
            "sm90/sageattention-2.2.0+cu128torch2.8-cp311-cp311",
        );
    let spec =
        Spec::parse("spec.toml", &only_cu126_for_sm90, SpecFormat::Toml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        describe(&resolve(&spec, &profile("h100-x8-580"))),
        "ok 2.8.0+cu126 [sageattention@sm90 triton>=3.4,<3.5]"
    );
}

#[test]
fn unmet_requirements_drop_the_optimisation_and_wheels_match_the_target_python() {
    let mut arm = profile("h100-x8-580");
    arm.arch = Some("aarch64".into());
    let resolution = resolve(&example(), &arm);
    let plan = resolution.plan().unwrap();
    // The x86_64 wheels do not fit an aarch64 host.
    let sage = plan.skipped.iter().find(|s| s.name == "sageattention").unwrap();
    assert!(sage.reason.contains("no wheel for cp312, cu128, torch 2.8 and aarch64"), "{}", sage.reason);
    let x86_only = example_with(|text| {
        text.replace(
            "name = \"triton\"\npackage = \"triton\"\nrequires = [\"nvidia\", \"linux\"]",
            "name = \"triton\"\npackage = \"triton\"\nrequires = [\"nvidia\", \"linux\", \"x86_64\"]",
        )
    });
    let resolution = resolve(&x86_only, &arm);
    let skipped = &resolution.plan().unwrap().skipped;
    assert!(skipped.iter().any(|s| s.name == "triton" && s.reason == "requires x86_64"), "{skipped:?}");

    // The venv's Python decides the wheel, not the agent's: a cp311 spec gets no cp312 wheel.
    let py311 = example_with(|text| text.replacen("python = \"3.12\"", "python = \"3.11\"", 1));
    let resolution = resolve(&py311, &profile("rtx4090-x1-570"));
    let plan = resolution.plan().unwrap();
    assert_eq!(plan.python_tag, "cp311");
    let sage = plan.skipped.iter().find(|s| s.name == "sageattention").unwrap();
    assert!(sage.reason.starts_with("no wheel for cp311, cu128, torch 2.8"), "{}", sage.reason);
}

#[test]
fn a_spec_can_teach_the_resolver_a_new_torch_release() {
    let unknown = EXAMPLE.replace("version = \"2.8.0\"", "version = \"2.12.0\"");
    let error = Spec::parse("spec.toml", &unknown, SpecFormat::Toml).unwrap_err().to_string();
    assert!(error.contains("no build facts for torch 2.12"), "{error}");
    let taught = unknown.replace("cuda = [\"cu128\", \"cu126\", \"cu130\"]", "cuda = [\"cu130\"]").replacen(
        "[index]",
        "[[torch.release]]\nseries = \"2.12\"\ncompanions = { torchvision = \"0.27\", torchaudio = \"2.12\" }\n  [[torch.release.build]]\n  cuda = \"cu130\"\n  driver_cuda = \"13.0\"\n  min_driver = \"580.65.06\"\n  arch = [\"8.0\", \"9.0\", \"10.0\", \"12.0\"]\n\n[index]",
        1,
    );
    let spec = Spec::parse("spec.toml", &taught, SpecFormat::Toml).unwrap_or_else(|e| panic!("{e}"));
    let h100 = resolve(&spec, &profile("h100-x8-580"));
    let plan = h100.plan().unwrap();
    assert_eq!(plan.torch, "2.12.0+cu130");
    assert_eq!(plan.packages[1].version, "0.27.0+cu130");
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
