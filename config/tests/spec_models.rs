//! `[[model]]` entries: parsed, refused with the entry and what to write, bounded,
//! covered by the revision id, and chosen per machine by their targets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use comfyfleet_config::MachineFacts;
use comfyfleet_config::machine_facts::GpuFacts;
use comfyfleet_config::spec::bounds::MAX_MODELS;
use comfyfleet_config::spec::canonical::to_canonical_json;
use comfyfleet_config::spec::model::{COMFYUI_FOLDERS, models_for, total_size};
use comfyfleet_config::spec::{Spec, SpecFormat};

const BASE: &str = r#"name = "render-prod"
python = "3.12"

[comfyui]
git = "https://github.com/comfyanonymous/ComfyUI.git"
ref = "v0.3.64"

[torch]
version = "2.8.0"
cuda = ["cu128"]
"#;

const FLUX_VAE: &str = "afc8e28272cd15db3919bacdb6918ce9c1ed22e96cb12c4d5ed0fba823529e38";
const CLIP_L: &str = "706fdb88e22e18177b207837c02f4b86a652abca0302821f2bfa24ac6aea4f71";

fn model(fields: &str) -> String {
    format!("\n[[model]]\n{fields}\n")
}

fn vae(extra: &str) -> String {
    model(&format!(
        "folder = \"vae\"\nname = \"flux/ae.safetensors\"\nurl = \
         \"https://huggingface.co/Comfy-Org/x/resolve/0123456789abcdef0123456789abcdef01234567/ae.safetensors\"\n\
         sha256 = \"{FLUX_VAE}\"\n{extra}"
    ))
}

fn parse(models: &str) -> Result<Spec, String> {
    Spec::parse("spec.toml", &format!("{BASE}{models}"), SpecFormat::Toml)
        .map_err(|errors| errors.to_string())
}

fn refusal(models: &str) -> String {
    match parse(models) {
        Ok(_) => panic!("accepted:\n{models}"),
        Err(text) => text,
    }
}

#[test]
fn a_model_entry_parses_with_every_field_and_reads_back_from_its_canonical_form() {
    let spec =
        parse(&vae("size = 335304388\ncredential = \"hf\"\ntarget = \"gpu.memory >= 40\"\nkeep = true"))
            .unwrap();
    let first = &spec.models[0];
    assert_eq!(first.relative_path(), "vae/flux/ae.safetensors");
    assert_eq!((first.size, first.keep, first.credential.as_deref()), (Some(335304388), true, Some("hf")));
    let canonical = to_canonical_json(&spec);
    let again = Spec::parse("c.json", &canonical, SpecFormat::Json).unwrap();
    assert_eq!(again, spec);
    // A custom node's folder below models/.
    let sams = parse(&model(&format!(
        "folder = \"models/sams\"\nname = \"sam_vit_b.pth\"\nurl = \"https://farm.example/sam_vit_b.pth\"\nsha256 \
         = \"{CLIP_L}\""
    )))
    .unwrap();
    assert_eq!(sams.models[0].relative_path(), "sams/sam_vit_b.pth");
    assert_eq!(COMFYUI_FOLDERS.len(), 25, "ComfyUI 0.33's folder_paths.py defines 25 model folders");
}

#[test]
fn a_spec_without_models_keeps_its_revision_id_and_every_sha256_is_in_it() {
    let bare = parse("").unwrap();
    assert!(
        !to_canonical_json(&bare).contains("model"),
        "no models, no key: earlier revisions keep their ids"
    );
    let one = parse(&vae("")).unwrap();
    let other = parse(&vae("").replace(FLUX_VAE, CLIP_L)).unwrap();
    assert_ne!(one.digest(), bare.digest());
    assert_ne!(one.digest(), other.digest(), "changing a model's sha256 is a new revision");
    let upper = parse(&vae("").replace(FLUX_VAE, &FLUX_VAE.to_ascii_uppercase())).unwrap();
    assert_eq!(upper.digest(), one.digest(), "a sha256 has one spelling");
}

#[test]
fn each_bad_entry_is_refused_naming_it_and_what_to_write() {
    let cases: [(&str, &str); 11] = [
        ("folder = \"vae\"", "folder = \"checkpoint\""),
        ("folder = \"vae\"", "folder = \"unet\""),
        ("folder = \"vae\"", "folder = \"models/../etc\""),
        ("folder = \"vae\"", "folder = \"models/loras/x\""),
        ("name = \"flux/ae.safetensors\"", "name = \"../ae.safetensors\""),
        ("name = \"flux/ae.safetensors\"", "name = \"/etc/passwd\""),
        ("name = \"flux/ae.safetensors\"", "name = \"a/b/ae.safetensors\""),
        ("name = \"flux/ae.safetensors\"", "name = \"flux\\\\ae.safetensors\""),
        ("url = \"https://huggingface.co", "url = \"http://huggingface.co"),
        ("url = \"https://huggingface.co", "url = \"https://user:token@huggingface.co"),
        ("size = 1", "size = 0"),
    ];
    let expected = [
        "model[0].folder: `checkpoint` is not a model folder of ComfyUI 0.33 (checkpoints, configs,",
        "model[0].folder: `unet` is ComfyUI's old name for `diffusion_models`: write folder = \"diffusion_models\"",
        "model[0].folder: `models/../etc` is not a safe path below models/: has a `..` component",
        "model[0].folder: `models/loras/x` is inside ComfyUI's own `loras` folder: write folder = \"loras\" and put \
         the subdirectory in the name (name = \"x/FILE\")",
        "model[0].name: `../ae.safetensors` has a `..` component, which would leave its folder",
        "model[0].name: `/etc/passwd` is an absolute path",
        "model[0].name: `a/b/ae.safetensors` has 2 directories; a name may have one",
        "model[0].name: `flux\\\\ae.safetensors` has a control character or one of \\",
        "model[0].url: `http://huggingface.co/",
        "model[0].url: `https://***@huggingface.co/",
        "model[0].size: is 0 bytes",
    ];
    for ((from, to), expected) in cases.iter().zip(expected) {
        let text = vae("size = 1").replacen(from, to, 1);
        assert!(text != vae("size = 1"), "{from}");
        let refused = refusal(&text);
        assert!(refused.contains(expected), "{to}:\n{refused}\nexpected: {expected}");
        assert!(refused.starts_with("spec.toml:"), "with a line: {refused}");
    }
}

#[test]
fn a_model_without_a_sha256_or_with_a_bad_one_is_refused_with_how_to_get_one() {
    let refused = refusal(&vae("").replace(&format!("sha256 = \"{FLUX_VAE}\"\n"), ""));
    assert!(refused.contains("model[0]: `flux/ae.safetensors` has no sha256: add sha256 = "), "{refused}");
    assert!(refused.contains("comfyfleet models import"), "{refused}");
    let refused = refusal(&vae("").replace(FLUX_VAE, "abc"));
    assert!(
        refused.contains("`abc` is not a sha256: write the 64 hex digits that `sha256sum FILE` prints"),
        "{refused}"
    );
    let refused = refusal(&vae("target = \"gpu.memroy >= 40\""));
    assert!(refused.contains("gpu.memroy"), "{refused}");
    let refused = refusal(&vae("folders = \"vae\""));
    assert!(refused.contains("unknown key `folders`, expected one of `folder`"), "{refused}");
}

#[test]
fn one_path_twice_is_refused_unless_targets_split_the_machines() {
    let refused = refusal(&format!("{}{}", vae(""), vae("").replace(FLUX_VAE, CLIP_L)));
    assert!(
        refused.contains(
            "model[1].name: model[0] already puts vae/flux/ae.safetensors on every machine it targets"
        ),
        "{refused}"
    );
    // One name, two files: the bf16 one on large GPUs, the fp8 one elsewhere.
    let split = format!(
        "{}{}",
        vae("target = \"gpu.memory >= 40\""),
        vae("target = \"gpu.memory < 40\"").replace(FLUX_VAE, CLIP_L)
    );
    let spec = parse(&split).unwrap();
    let large = machine("h100", 80);
    let small = machine("rtx4090", 24);
    let chosen = |facts: &MachineFacts| -> Vec<usize> {
        models_for(&spec, facts).unwrap().into_iter().map(|(i, _)| i).collect()
    };
    assert_eq!(chosen(&large), vec![0]);
    assert_eq!(chosen(&small), vec![1]);
    // Targets that overlap on one machine: the plan names both entries.
    let overlapping = parse(&format!(
        "{}{}",
        vae("target = \"gpu.memory >= 20\""),
        vae("target = \"gpu.memory < 40\"").replace(FLUX_VAE, CLIP_L)
    ))
    .unwrap();
    let why = models_for(&overlapping, &small).unwrap_err();
    assert!(
        why.starts_with("model[0] and model[1] both put vae/flux/ae.safetensors on this machine"),
        "{why}"
    );
    // Sizes add up; an unknown one is counted.
    let sized =
        parse(&format!("{}{}", vae("size = 100"), vae("").replace("flux/", "").replace(FLUX_VAE, CLIP_L)))
            .unwrap();
    assert_eq!(total_size(sized.models.iter()), (100, 1));
}

#[test]
fn model_credentials_are_checked_with_the_others() {
    let refused = refusal(&format!(
        "[index]\nurl = \"https://huggingface.co/simple\"\ncredential = \"pypi\"\n{}",
        vae("credential = \"hf\"")
    ));
    assert!(
        refused.contains("model[0].credential: https://huggingface.co already takes credential \"pypi\""),
        "{refused}"
    );
    let spec = parse(&vae("credential = \"hf\"")).unwrap();
    let uses = comfyfleet_config::source_credentials::credential_uses(&spec);
    assert_eq!(uses[0].key, "model[0].credential");
}

#[test]
fn too_many_models_are_refused_before_anything_else() {
    let many: String = (0..=MAX_MODELS).map(|i| vae("").replace("flux/ae", &format!("m{i}"))).collect();
    let refused = refusal(&many);
    assert!(
        refused.contains(&format!(
            "the spec has {} [[model]] entries; one spec may have at most",
            MAX_MODELS + 1
        ))
    );
}

fn machine(id: &str, memory_gib: u64) -> MachineFacts {
    let mut facts = MachineFacts::new(id.to_owned(), id.to_owned(), BTreeMap::new(), None);
    facts.reported = true;
    facts.gpus = vec![GpuFacts {
        index: 0,
        name: Some("GPU".to_owned()),
        compute_capability: None,
        memory_total_bytes: Some(memory_gib << 30),
    }];
    facts
}
