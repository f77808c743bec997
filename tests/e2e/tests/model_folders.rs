//! Models live in `shared/models/`, the one models root every revision shares, and
//! ComfyUI finds them in every model folder it knows, with real agents: a ComfyUI
//! without `--models-directory` (0.3.64) gets a paths file naming every folder its
//! `folder_paths.py` defines; one with it (0.33.0) is pointed at the root whole.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use comfyfleet_e2e::provision::{Fleet, comfyui_get, comfyui_port};
use serde_json::{Value, json};

fn argv(port: u16) -> Vec<String> {
    let stats = comfyui_get(port, "/system_stats").unwrap();
    stats["system"]["argv"].as_array().unwrap().iter().map(|arg| arg.as_str().unwrap().to_owned()).collect()
}

#[test]
fn models_in_every_folder_comfyui_defines_are_seen_from_the_shared_models_root() {
    let fleet = Fleet::start();
    let agent = fleet.agent("rtx4090", "rtx4090-x1-570");
    let models = agent.data_dir.join("shared/models");
    // Folders the agent's paths file did not name (it knew 12).
    for (folder, file) in
        [("model_patches", "patch.safetensors"), ("latent_upscale_models", "x2.safetensors")]
    {
        std::fs::create_dir_all(models.join(folder)).unwrap();
        std::fs::write(models.join(folder).join(file), "").unwrap();
    }

    // ComfyUI 0.3.64: a paths file, from its own folder_paths.py.
    fleet.apply(&fleet.spec(|options| options.cuda = vec!["cu128".to_owned()]));
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]).success();
    let port = comfyui_port(&agent);
    assert_eq!(comfyui_get(port, "/models/model_patches"), Some(json!(["patch.safetensors"])));
    assert!(argv(port).iter().any(|arg| arg == "--extra-model-paths-config"), "{:?}", argv(port));
    let paths = std::fs::read_to_string(agent.data_dir.join("shared/extra_model_paths.yaml")).unwrap();
    assert!(paths.contains("    audio_encoders: |\n"), "{paths}");
    assert!(!paths.contains("latent_upscale_models"), "0.3.64 does not define it: {paths}");
    assert!(models.join("audio_encoders").is_dir() && models.join("t2i_adapter").is_dir());

    // ComfyUI 0.33.0: --models-directory, the same root.
    let comfyui_0_33 = fleet.world.repos.comfyui.commit_version_0_33();
    fleet.apply(&fleet.spec(|options| {
        options.comfyui_ref = comfyui_0_33.clone();
        options.cuda = vec!["cu128".to_owned()];
    }));
    fleet.cli(&["rollout", "start", "render-prod", "--wait", "--timeout", "3m"]).success();
    let port = comfyui_port(&agent);
    let args = argv(port);
    let at = args.iter().position(|arg| arg == "--models-directory").unwrap_or_else(|| panic!("{args:?}"));
    assert_eq!(std::path::Path::new(&args[at + 1]), models);
    assert_eq!(comfyui_get(port, "/models/latent_upscale_models"), Some(json!(["x2.safetensors"])));
    assert_eq!(comfyui_get(port, "/models/model_patches"), Some(json!(["patch.safetensors"])));
    let types = comfyui_get(port, "/models").unwrap();
    for folder in
        ["detection", "optical_flow", "geometry_estimation", "frame_interpolation", "background_removal"]
    {
        assert!(types.as_array().unwrap().contains(&Value::from(folder)), "{types}");
        assert!(models.join(folder).is_dir(), "{folder} is created in shared/models");
    }
}
