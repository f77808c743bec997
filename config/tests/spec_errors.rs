//! Every way a spec is refused: the message says what is wrong and what to write,
//! at the file, line and column of the offending key or value.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use comfyfleet_config::spec::{Spec, SpecError, SpecFormat};

const BASE: &str = r#"name = "render-prod"
python = "3.12"

[comfyui]
git = "https://github.com/comfyanonymous/ComfyUI.git"
ref = "v0.3.64"

[torch]
version = "2.8.0"
with = ["torchvision"]
cuda = ["cu128", "cu126"]

[[optimization]]
name = "sageattention"
smoke = { call = "sageattention.sageattn" }
  [[optimization.wheel]]
  compute = ">=8.9,<9.0"
  python = "cp312"
  cuda = "cu128"
  torch = "2.8"
  url = "https://wheels.example/sm89/sageattention-2.2.0-cp312-cp312-linux_x86_64.whl"
  sha256 = "f34c50a231a45bfa8194ac24c8e451ecfe1a5bd4af9b2fb42323f3a66bd12e7c"

[[optimization]]
name = "triton"
package = "triton"
torch_constraints = { "2.8" = ">=3.4,<3.5" }

[[custom_node]]
git = "https://github.com/kijai/ComfyUI-KJNodes.git"
ref = "main"
"#;

fn errors(text: &str) -> Vec<SpecError> {
    match Spec::parse("spec.toml", text, SpecFormat::Toml) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(errors) => errors.0,
    }
}

/// The single error for `text`, as "LINE:COLUMN message".
fn error(text: &str) -> String {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let error = &errors[0];
    assert_eq!(error.file, "spec.toml");
    format!("{}:{} {}", error.line, error.column, error.to_string().split_once(": ").unwrap().1)
}

fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from}");
    BASE.replacen(from, to, 1)
}

#[track_caller]
fn assert_error(text: &str, position: &str, fragments: &[&str]) {
    let error = error(text);
    assert!(error.starts_with(&format!("{position} ")), "expected at {position}: {error}");
    for fragment in fragments {
        assert!(error.contains(fragment), "missing {fragment:?} in: {error}");
    }
}

#[test]
fn the_base_spec_is_valid() {
    Spec::parse("spec.toml", BASE, SpecFormat::Toml).unwrap();
}

#[test]
fn unknown_keys_are_refused_where_they_are() {
    assert_error(
        &edit("version = \"2.8.0\"", "versoin = \"2.8.0\""),
        "9:1",
        &["unknown key `versoin`", "expected one of", "`version`"],
    );
    assert_error(&edit("[comfyui]", "colour = \"blue\"\n[comfyui]"), "4:1", &["unknown key `colour`"]);
    assert_error(&edit("  sha256 =", "  md5 = \"x\"\n  sha256 ="), "22:3", &["unknown key `md5`"]);
}

#[test]
fn a_custom_node_says_whether_it_provides_node_classes_with_a_boolean() {
    let spec =
        Spec::parse("spec.toml", &format!("{BASE}provides_nodes = false\n"), SpecFormat::Toml).unwrap();
    assert!(!spec.custom_nodes[0].provides_nodes && !spec.custom_nodes[0].expects_node_classes());
    let spec = Spec::parse("spec.toml", BASE, SpecFormat::Toml).unwrap();
    assert!(spec.custom_nodes[0].provides_nodes, "node classes are expected unless the spec says otherwise");
    assert_error(
        &format!("{BASE}provides_nodes = \"no\"\n"),
        "32:18",
        &["custom_node[0].provides_nodes", "expected a boolean"],
    );
}

#[test]
fn bad_versions_and_specifiers_are_refused() {
    assert_error(
        &edit("version = \"2.8.0\"", "version = \"2.8.0+cu128\""),
        "9:11",
        &["local tag", "write the release only"],
    );
    assert_error(
        &edit("version = \"2.8.0\"", "version = \"two\""),
        "9:11",
        &["not a version", "e.g. \"2.8.0\""],
    );
    assert_error(
        &edit("python = \"3.12\"", "python = \"3.x\""),
        "2:10",
        &["not a Python version", "\"3.12\""],
    );
    assert_error(
        &edit("\"cu128\", \"cu126\"", "\"cu128\", \"cuda12\""),
        "11:18",
        &["not a CUDA tag", "\"cu128\""],
    );
    assert_error(
        &edit("\">=3.4,<3.5\"", "\">=3.4,<\""),
        "27:31",
        &["not a PEP 440 version specifier", "\">=3.4,<3.5\""],
    );
    assert_error(&edit("torch = \"2.8\"", "torch = \"2.8.1.x\""), "20:11", &["not a torch series"]);
}

#[test]
fn empty_and_overlapping_wheel_ranges_are_refused() {
    assert_error(
        &edit("\">=8.9,<9.0\"", "\">=9.0,<8.9\""),
        "17:13",
        &["contains no compute capability", "\">=8.9,<9.0\""],
    );
    let second = "\n  [[optimization.wheel]]\n  compute = \">=8.6,<9.0\"\n  python = \"cp312\"\n  cuda = \"cu128\"\n  torch = \"2.8\"\n  url = \"https://wheels.example/sm86/sageattention-2.2.0-cp312-cp312-linux_x86_64.whl\"\n  sha256 = \"ba95d15994cfd41f2fef95ee5ae5ffc25ea92c70db284702a65a47554e9b898e\"\n";
    let overlapping = edit(
        "\n[[optimization]]\nname = \"triton\"",
        &format!("{second}\n[[optimization]]\nname = \"triton\""),
    );
    assert_error(
        &overlapping,
        "25:3",
        &["optimization[0].wheel[1].compute", ">=8.6,<9.0 overlaps wheel[0] (>=8.9,<9.0)", "narrow the sets"],
    );
    // The same range for another CUDA tag is not an overlap.
    let other_cuda = overlapping.replacen(
        "  cuda = \"cu128\"\n  torch = \"2.8\"\n  url = \"https://wheels.example/sm86",
        "  cuda = \"cu126\"\n  torch = \"2.8\"\n  url = \"https://wheels.example/sm86",
        1,
    );
    Spec::parse("spec.toml", &other_cuda, SpecFormat::Toml).unwrap();
}

#[test]
fn wheels_need_a_sha256_and_https() {
    let no_sha =
        edit("  sha256 = \"f34c50a231a45bfa8194ac24c8e451ecfe1a5bd4af9b2fb42323f3a66bd12e7c\"\n", "");
    assert_error(&no_sha, "16:3", &["optimization[0].wheel[0]", "has no sha256", "sha256sum FILE"]);
    assert_error(&edit("f34c50a231a45bfa", "zz"), "22:12", &["not a sha256", "64 hex digits"]);
    let http = edit("url = \"https://wheels.example", "url = \"http://wheels.example");
    assert_error(&http, "21:3", &["optimization[0].wheel[0].url", "plain http", "trusted_hosts"]);
    // Listing the mirror as trusted allows it.
    let trusted = format!(
        "{http}\n[index]\nurl = \"http://wheels.example/simple\"\ntrusted_hosts = [\"wheels.example\"]\n"
    );
    Spec::parse("spec.toml", &trusted, SpecFormat::Toml).unwrap();
    assert_error(
        &format!("{BASE}\n[index]\nurl = \"http://pypi.org/simple\"\n"),
        "34:1",
        &["index.url", "plain http"],
    );
    let wrong_python = edit("python = \"cp312\"", "python = \"cp39-abi3\"");
    assert_error(
        &wrong_python,
        "18:3",
        &["says cp39-abi3 but sageattention-2.2.0-cp312-cp312-linux_x86_64.whl is built for cp312-cp312"],
    );
    let other_python =
        edit("python = \"cp312\"", "python = \"cp311\"").replace("cp312-cp312-linux", "cp311-cp311-linux");
    assert_error(&other_python, "18:3", &["cp311 cannot be installed into the spec's Python 3.12 venv"]);
    let not_a_wheel = edit("linux_x86_64.whl\"", "tar.gz\"");
    assert_error(&not_a_wheel, "21:3", &["is not a .whl file"]);
}

#[test]
fn names_and_refs_that_inject_or_escape_are_refused() {
    assert_error(
        &edit("name = \"render-prod\"", "name = \"../../etc\""),
        "1:1",
        &["name: `../../etc` is not a safe name", "\"render-prod\""],
    );
    assert_error(
        &edit("ref = \"v0.3.64\"", "ref = \"--upload-pack=touch /tmp/x\""),
        "6:1",
        &["comfyui.ref", "starts with `-`", "branch, tag or full commit"],
    );
    assert_error(
        &edit("ref = \"v0.3.64\"", "ref = \"main; reboot\""),
        "6:1",
        &["space, control or shell character"],
    );
    assert_error(&edit("ref = \"v0.3.64\"", "ref = \"../../HEAD\""), "6:1", &["contains `..`"]);
    assert_error(
        &edit(
            "git = \"https://github.com/comfyanonymous/ComfyUI.git\"",
            "git = \"ext::sh -c touch% /tmp/pwned\"",
        ),
        "5:1",
        &["comfyui.git", "ext::"],
    );
    assert_error(
        &edit(
            "git = \"https://github.com/kijai/ComfyUI-KJNodes.git\"",
            "git = \"https://github.com/kijai/..git\"",
        ),
        "30:1",
        &["custom_node[0].git", "directory name", "set name = "],
    );
    assert_error(
        &edit("ref = \"main\"", "ref = \"main\"\nname = \"../evil\""),
        "32:1",
        &["custom_node[0].name", "not a safe name"],
    );
    assert_error(
        &edit("package = \"triton\"", "package = \"triton; curl x|sh\""),
        "26:1",
        &["optimization[1].package", "not a Python package name"],
    );
    assert_error(
        &edit("name = \"triton\"", "name = \"triton\"\nimport = \"os; import x\""),
        "26:1",
        &["optimization[1].import", "not a Python module name"],
    );
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let text = edit("name = \"render-prod\"", "name = \"a b\"").replace("ref = \"main\"", "ref = \"-x\"");
    let errors = errors(&text);
    let positions: Vec<(usize, String)> =
        errors.iter().map(|e| (e.line, e.path.clone().unwrap_or_default())).collect();
    assert_eq!(positions, [(1, "name".to_owned()), (31, "custom_node[0].ref".to_owned())]);
}

#[test]
fn cross_field_rules_name_what_to_write() {
    assert_error(
        &edit("cuda = [\"cu128\", \"cu126\"]", "cuda = [\"cu128\", \"cu118\"]"),
        "11:18",
        &["torch 2.8 has no cu118 build", "[[torch.release]]"],
    );
    assert_error(
        &edit("version = \"2.8.0\"", "version = \"3.1.0\""),
        "9:1",
        &["no build facts for torch 3.1", "[[torch.release]]"],
    );
    assert_error(
        &edit("with = [\"torchvision\"]", "with = [\"xformers\"]"),
        "10:9",
        &["not a companion of torch 2.8"],
    );
    let run = format!(
        "{BASE}\n[run]\nargs = [\"--port\", \"9000\"]\n[run.when_verified]\nflash-attn = [\"--use-flash-attention\"]\n"
    );
    let errors = errors(&run);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].to_string().contains("run.args[0]: the port is set with run.port"), "{}", errors[0]);
    assert!(
        errors[1].to_string().contains("`flash-attn` is not an optimization of this spec"),
        "{}",
        errors[1]
    );
    let rollout = format!("{BASE}\n[rollout]\nmax_unavailable = 0\n");
    assert_error(&rollout, "34:1", &["rollout.max_unavailable", "never let a machine through"]);
    assert_error(&format!("{BASE}\n[rollout]\nfailure_budget = \"150%\"\n"), "34:18", &["more than 100%"]);
    assert_error(&format!("{BASE}\n[rollout]\nsoak = \"soon\"\n"), "34:8", &["not a duration"]);
}

#[test]
fn selector_errors_point_into_the_selector() {
    let text = format!("{BASE}\n[target]\nselector = 'gpu.compute >= 8.0 && labels.pool = \"a\"'\n");
    assert_error(&text, "34:47", &["write =="]);
    let text = format!("{BASE}\n[target]\nselector = 'gpu.colour == 1'\n");
    assert_error(&text, "34:13", &["gpu.colour"]);
}

#[test]
fn json_specs_are_located_too() {
    let json = r#"{
  "name": "render-prod",
  "python": "3.12",
  "comfyui": {"git": "https://github.com/comfyanonymous/ComfyUI.git", "ref": "v0.3.64"},
  "torch": {"version": "2.8.0", "cuda": ["cu128"]},
  "optimization": [
    {"name": "sage", "smoke": {"call": "sageattention.sageattn"}, "wheel": [{"compute": "8.9", "python": "cp312", "cuda": "cu128", "torch": "2.8",
      "url": "https://w.example/sageattention-2.2.0-cp312-cp312-linux_x86_64.whl"}]}
  ]
}"#;
    let errors = Spec::parse("spec.json", json, SpecFormat::Json).unwrap_err().0;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!((errors[0].line, errors[0].column), (7, 77), "{}", errors[0]);
    assert!(errors[0].message.contains("has no sha256"));
    let unknown = json.replace("\"python\": \"3.12\"", "\"pyhton\": \"3.12\"");
    let errors = Spec::parse("spec.json", &unknown, SpecFormat::Json).unwrap_err().0;
    assert_eq!(
        (errors[0].line, errors[0].message.contains("unknown key `pyhton`")),
        (3, true),
        "{}",
        errors[0]
    );
}

#[test]
fn per_build_torch_indexes_must_be_allowed_builds_over_https() {
    let text = edit(
        "cuda = [\"cu128\", \"cu126\"]",
        "cuda = [\"cu128\", \"cu126\"]\nindexes = { cu130 = \"https://m.example/cu130\", cu126 = \"http://m.example/cu126\" }",
    );
    let errors = errors(&text);
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{messages:#?}");
    assert!(
        messages.iter().any(|m| m.starts_with("spec.toml:12:")
            && m.contains("torch.indexes.cu130: cu130 is not in torch.cuda")),
        "{messages:#?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("torch.indexes.cu126: `http://m.example/cu126` uses plain http")),
        "{messages:#?}"
    );
}

#[test]
fn instances_are_a_mode_or_gpu_groups_never_both() {
    let accepted = |text: &str| Spec::parse("spec.toml", text, SpecFormat::Toml).unwrap();
    let one = accepted(&format!("{BASE}\n[run]\ninstances = \"one\"\n"));
    assert_eq!(one.run.instances_plan().groups_for(&[0, 1]).unwrap(), vec![Vec::<u32>::new()]);
    let groups =
        accepted(&format!("{BASE}\n[[run.instance]]\ngpus = [0, 1]\n[[run.instance]]\ngpus = [2]\n"));
    assert_eq!(groups.run.instances_plan().groups_for(&[0, 1, 2]).unwrap(), vec![vec![0, 1], vec![2]]);
    let default = accepted(BASE);
    assert_eq!(default.run.instances_plan().groups_for(&[0, 1]).unwrap(), vec![vec![0], vec![1]]);

    let wrong = errors(&format!("{BASE}\n[run]\ninstances = \"two\"\n"));
    assert!(wrong[0].to_string().contains("per-gpu"), "{}", wrong[0]);
    let both = errors(&format!("{BASE}\n[run]\ninstances = \"one\"\n[[run.instance]]\ngpus = [0]\n"));
    assert!(both[0].to_string().contains("keep one"), "{}", both[0]);
    let twice = errors(&format!("{BASE}\n[[run.instance]]\ngpus = [0, 1]\n[[run.instance]]\ngpus = [1]\n"));
    assert!(twice[0].to_string().contains("GPU 1 is in two instances"), "{}", twice[0]);
    let empty = errors(&format!("{BASE}\n[[run.instance]]\ngpus = []\n"));
    assert!(empty[0].to_string().contains("run.instance[0].gpus"), "{}", empty[0]);
}
