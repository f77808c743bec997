//! Optimisations that install but do not work on the machine: an optional one is
//! reported as failed (the environment runs without it, and says so), a fatal one
//! fails the environment and nothing is switched.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use comfyfleet_e2e::provision::{Fleet, comfyui_get, comfyui_port, current_target, step};
use comfyfleet_e2e::standin::{SageAttentionWheels, WheelBuilder, system_python};

/// A kernel wheel for SM 8.9 whose module fails to import, as a wheel built for
/// another SM or torch does ("SM89 kernel is not available", "undefined symbol").
fn broken_kernel_block(fleet: &Fleet, fatal: bool) -> String {
    let tag = &system_python().tag;
    let wheel = WheelBuilder::new("brokenattn", "1.0.0")
        .tags(tag, tag, "linux_x86_64")
        .file("brokenattn/__init__.py", "raise ImportError('SM89 kernel is not available')\n")
        .write_to(&fleet.world.catalog.root.join("wheels/brokenattn"));
    format!(
        r#"
[[optimization]]
name = "brokenattn"
fatal = {fatal}
smoke = {{ call = "brokenattn.attention" }}
  [[optimization.wheel]]
  compute = ">=8.9,<9.0"
  python = "{tag}"
  cuda = "cu128"
  torch = "2.9"
  url = "{}/wheels/brokenattn/{}"
  sha256 = "{}"
"#,
        fleet.base_url(),
        wheel.file_name,
        wheel.sha256
    )
}

/// The standard test spec with `block` added among its optimisations.
fn spec_with(fleet: &Fleet, block: &str) -> String {
    let spec = fleet.spec(|options| options.cuda = vec!["cu128".to_owned()]);
    let at = spec.find("[[custom_node]]").unwrap();
    format!("{}{block}\n{}", &spec[..at], &spec[at..])
}

#[test]
fn an_optional_optimisation_that_does_not_import_is_reported_and_a_fatal_one_fails_the_machine() {
    let fleet = Fleet::start();
    let agent = fleet.agent("rtx4090", "rtx4090-x1-570");
    let id = fleet.machine_id("rtx4090");

    fleet.apply(&spec_with(&fleet, &broken_kernel_block(&fleet, false)));
    let waited = fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]).success();
    assert!(waited.contains("brokenattn"), "the wait line names the failed optimisation: {waited}");
    let machine = fleet.show(&id);
    assert_eq!(machine["report"]["phase"], "active");
    let outcomes = machine["report"]["optimizations"].as_array().unwrap();
    let broken = outcomes.iter().find(|outcome| outcome["name"] == "brokenattn").unwrap();
    assert_eq!(broken["state"], "failed", "{broken}");
    let detail = broken["detail"].as_str().unwrap();
    assert!(detail.contains("ImportError: SM89 kernel is not available"), "{detail}");
    let verify = step(&machine, "verify")["detail"].as_str().unwrap();
    assert!(verify.contains("brokenattn FAILED"), "{verify}");
    let sage = outcomes.iter().find(|outcome| outcome["name"] == "sageattention").unwrap();
    assert_eq!(sage["state"], "verified", "the others still verify");
    let first = current_target(&agent).unwrap();
    let port = comfyui_port(&agent);

    // The same optimisation, fatal: the environment fails, the machine stays put.
    fleet.apply(&spec_with(&fleet, &broken_kernel_block(&fleet, true)));
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]).failure();
    let machine = fleet.show(&id);
    assert_eq!(machine["report"]["phase"], "failed");
    let error = machine["report"]["error"].as_str().unwrap();
    assert!(error.contains("verify: fatal optimization brokenattn does not import"), "{error}");
    assert_eq!(current_target(&agent).unwrap(), first);
    assert_eq!(comfyui_get(port, "/system_stats").unwrap()["system"]["pytorch_version"], "2.9.0+cu128");
}

#[test]
fn a_wheel_without_kernels_for_one_gpu_fails_verification_on_that_gpu() {
    let fleet = Fleet::start();
    // An RTX 4090 (SM 8.9) and an RTX A6000 (SM 8.6) in one box.
    let agent = fleet.agent("mixed", "mixed-4090-a6000-570");
    let id = fleet.machine_id("mixed");
    let wheels = fleet.partial_sageattention();
    let spec = |fatal: bool| {
        fleet.spec(|options| {
            options.cuda = vec!["cu128".to_owned()];
            options.sageattention = SageAttentionWheels::Custom(wheels.clone());
            options.sageattention_fatal = fatal;
        })
    };

    // Optional: the smoke call fails on GPU 1 only; the machine runs without
    // --use-sage-attention and says why.
    fleet.apply(&spec(false));
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]).success();
    let machine = fleet.show(&id);
    assert_eq!(machine["report"]["phase"], "active");
    let outcomes = machine["report"]["optimizations"].as_array().unwrap();
    let sage = outcomes.iter().find(|outcome| outcome["name"] == "sageattention").unwrap();
    assert_eq!(sage["state"], "failed", "{sage}");
    let detail = sage["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(
            "sageattention.sageattn fails on GPU 1 (NVIDIA RTX A6000, SM 8.6): RuntimeError: CUDA error: \
             no kernel image is available"
        ),
        "{detail}"
    );
    assert!(!detail.contains("GPU 0"), "the 4090 has its kernels: {detail}");
    let argv = comfyui_get(comfyui_port(&agent), "/system_stats").unwrap()["system"]["argv"].clone();
    assert!(!argv.as_array().unwrap().iter().any(|arg| arg == "--use-sage-attention"), "{argv}");
    let shown = fleet.cli(&["machines", "show", &id]).success();
    assert!(shown.contains("fails on GPU 1 (NVIDIA RTX A6000, SM 8.6)"), "{shown}");
    let first = current_target(&agent).unwrap();

    // Fatal: the environment fails verification and nothing is switched.
    fleet.apply(&spec(true));
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]).failure();
    let machine = fleet.show(&id);
    assert_eq!(machine["report"]["phase"], "failed");
    let error = machine["report"]["error"].as_str().unwrap();
    assert!(
        error.contains("verify: fatal optimization sageattention sageattention.sageattn fails on GPU 1 (NVIDIA RTX A6000, SM 8.6)"),
        "{error}"
    );
    assert_eq!(current_target(&agent).unwrap(), first, "nothing was switched");
}
