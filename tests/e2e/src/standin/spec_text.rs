//! Spec text pointing at the stand-ins, so a test writes the environment it means
//! in a few lines and the wheel URLs and digests always match what is served.
//! A unit test parses the result with the real spec parser: the text cannot drift
//! from the format.

use std::fmt::Write as _;

use super::catalog::{Catalog, KernelWheel};

/// What a test spec varies; the rest is fixed (torch with torchvision and torchaudio,
/// the stand-in indexes, SageAttention 2 and 3, triton).
#[derive(Debug, Clone)]
pub struct TestSpecOptions {
    pub name: String,
    pub comfyui_git: String,
    pub comfyui_ref: String,
    /// The torch release: `2.9.0` unless a test says otherwise.
    pub torch_version: String,
    /// Allowed CUDA builds, most preferred first.
    pub cuda: Vec<String>,
    /// More `[torch]` keys, e.g. `driver_compat = "minor"`.
    pub torch_extra: String,
    /// Which SageAttention 2 wheels the spec lists.
    pub sageattention: SageAttentionWheels,
    /// Whether SageAttention 2 failing fails the machine.
    pub sageattention_fatal: bool,
    pub custom_nodes: Vec<TestNode>,
    pub port: u16,
    pub drain_timeout: String,
    pub health_timeout: String,
    /// More `[run]` keys, e.g. `manager = "read-only"`.
    pub run_extra: String,
}

/// The SageAttention 2 wheels of a test spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SageAttentionWheels {
    /// One wheel per SM range (sm70, sm80, sm86, sm89, sm90) for the spec's torch series.
    PerSm,
    /// The stable-ABI wheels with kernels for SM 8.0, 8.6, 8.9, 9.0 and 12.0.
    Fat,
    /// These `[[optimization.wheel]]` tables, verbatim.
    Custom(String),
}

/// A `[[custom_node]]` of a test spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestNode {
    pub git: String,
    pub reference: String,
    /// More keys, e.g. `required = false` or `install_script = true`.
    pub extra: String,
}

impl TestNode {
    pub fn new(git: &str, reference: &str) -> Self {
        Self { git: git.to_owned(), reference: reference.to_owned(), extra: String::new() }
    }
}

impl TestSpecOptions {
    /// ComfyUI from `comfyui_git` at `comfyui_ref`, torch 2.9.0, port 8188, cu128 then
    /// cu126 then cu130, per-SM SageAttention wheels, 30 s timeouts, no custom nodes.
    pub fn new(comfyui_git: &str, comfyui_ref: &str) -> Self {
        Self {
            name: "standin-test".to_owned(),
            comfyui_git: comfyui_git.to_owned(),
            comfyui_ref: comfyui_ref.to_owned(),
            torch_version: "2.9.0".to_owned(),
            cuda: ["cu128", "cu126", "cu130"].map(str::to_owned).to_vec(),
            torch_extra: String::new(),
            sageattention: SageAttentionWheels::PerSm,
            sageattention_fatal: false,
            custom_nodes: Vec::new(),
            port: 8188,
            drain_timeout: "30s".to_owned(),
            health_timeout: "30s".to_owned(),
            run_extra: String::new(),
        }
    }

    /// `2.9` of `2.9.0`.
    pub fn torch_series(&self) -> String {
        self.torch_version
            .rsplit_once('.')
            .map_or(self.torch_version.clone(), |(series, _)| series.to_owned())
    }
}

impl Catalog {
    /// One `[[optimization.wheel]]` table per stand-in kernel wheel that `keep`s.
    pub fn wheel_tables(&self, base_url: &str, keep: impl Fn(&KernelWheel) -> bool) -> String {
        let mut text = String::new();
        for wheel in self.kernel_wheels.iter().filter(|wheel| keep(wheel)) {
            text.push_str("\n  [[optimization.wheel]]\n");
            if wheel.compute.starts_with('[') {
                writeln!(text, "  compute = {}", wheel.compute).unwrap();
            } else {
                writeln!(text, "  compute = \"{}\"", wheel.compute).unwrap();
            }
            writeln!(text, "  python = \"{}\"", wheel.python_tag).unwrap();
            writeln!(text, "  cuda = \"{}\"", wheel.cuda).unwrap();
            writeln!(text, "  torch = \"{}\"", wheel.torch_series).unwrap();
            writeln!(text, "  url = \"{base_url}{}\"", wheel.wheel.url_path).unwrap();
            writeln!(text, "  sha256 = \"{}\"", wheel.wheel.wheel.sha256).unwrap();
        }
        text
    }

    /// `[[optimization]]` blocks for SageAttention 2 (`sageattention`) and 3
    /// (`sageattention3`, module `sageattn3`), each with its smoke call, URLs under
    /// `base_url` (`http://127.0.0.1:PORT`).
    pub fn optimization_toml(&self, base_url: &str, options: &TestSpecOptions) -> String {
        let series = options.torch_series();
        let sage2 = match &options.sageattention {
            SageAttentionWheels::PerSm => self.wheel_tables(base_url, |wheel| {
                wheel.optimization == "sageattention" && wheel.torch_series == series
            }),
            SageAttentionWheels::Fat => self.wheel_tables(base_url, |wheel| {
                wheel.optimization == "sageattention" && wheel.torch_series == ">=2.9"
            }),
            SageAttentionWheels::Custom(tables) => tables.clone(),
        };
        let sage3 = self.wheel_tables(base_url, |wheel| {
            wheel.optimization == "sageattention3" && wheel.torch_series == series
        });
        let mut text = String::new();
        for (optimization, import, smoke, fatal, wheels) in [
            ("sageattention", "sageattention", "sageattention.sageattn", options.sageattention_fatal, sage2),
            ("sageattention3", "sageattn3", "sageattn3.sageattn3_blackwell", false, sage3),
        ] {
            if wheels.is_empty() {
                continue;
            }
            text.push_str("[[optimization]]\n");
            writeln!(text, "name = \"{optimization}\"").unwrap();
            if import != optimization {
                writeln!(text, "import = \"{import}\"").unwrap();
            }
            writeln!(text, "requires = [\"nvidia\", \"linux\"]\nfatal = {fatal}").unwrap();
            writeln!(text, "smoke = {{ call = \"{smoke}\" }}").unwrap();
            text.push_str(&wheels);
            text.push('\n');
        }
        text
    }

    /// A complete spec over the stand-ins served at `base_url`.
    pub fn test_spec(&self, base_url: &str, options: &TestSpecOptions) -> String {
        let quoted = |items: &[String]| {
            let items: Vec<String> = items.iter().map(|item| format!("\"{item}\"")).collect();
            format!("[{}]", items.join(", "))
        };
        let mut text = format!(
            r#"# Generated by comfyfleet's test stand-ins: every URL is the local stand-in index.
name = "{name}"
python = "{python}"

[comfyui]
git = "{comfyui_git}"
ref = "{comfyui_ref}"

[torch]
version = "{torch}"
with = ["torchvision", "torchaudio"]
cuda = {cuda}
index = "{base_url}/whl/{{cuda}}"
{torch_extra}
[index]
url = "{base_url}/simple"
trusted_hosts = ["127.0.0.1"]

"#,
            name = options.name,
            python = self.python_version(),
            comfyui_git = options.comfyui_git,
            comfyui_ref = options.comfyui_ref,
            torch = options.torch_version,
            cuda = quoted(&options.cuda),
            torch_extra = options.torch_extra,
        );
        text.push_str(&self.optimization_toml(base_url, options));
        text.push_str(
            r#"[[optimization]]
name = "triton"
package = "triton"
requires = ["nvidia", "linux"]
fatal = false
torch_constraints = { "2.7" = ">=3.3,<3.4", "2.8" = ">=3.4,<3.5", "2.9" = ">=3.5,<3.6", "2.11" = ">=3.6,<3.7" }

"#,
        );
        for node in &options.custom_nodes {
            writeln!(
                text,
                "[[custom_node]]\ngit = \"{}\"\nref = \"{}\"\n{}",
                node.git, node.reference, node.extra
            )
            .unwrap();
        }
        write!(
            text,
            r#"[run]
port = {port}
args = []
drain_timeout = "{drain}"
health_timeout = "{health}"
{run_extra}
[run.when_verified]
sageattention = ["--use-sage-attention"]
"#,
            port = options.port,
            drain = options.drain_timeout,
            health = options.health_timeout,
            run_extra = options.run_extra,
        )
        .unwrap();
        text
    }
}

#[cfg(test)]
mod tests {
    use comfyfleet_config::{Spec, SpecFormat};

    use super::*;

    #[test]
    fn the_rendered_spec_is_a_valid_spec_naming_every_kernel_wheel() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::standard(dir.path(), "cp311");
        let mut options = TestSpecOptions::new("file:///tmp/standin/ComfyUI", "v0.3.64");
        options.custom_nodes = vec![
            TestNode::new("file:///tmp/standin/ComfyUI-KJNodes", "main"),
            TestNode::new("file:///tmp/standin/ComfyUI-VideoHelperSuite", "main"),
        ];
        let text = catalog.test_spec("http://127.0.0.1:41234", &options);
        let spec = Spec::parse("standin.toml", &text, SpecFormat::Toml).unwrap_or_else(|errors| {
            panic!("the rendered spec does not parse:\n{errors}\n---\n{text}");
        });
        assert_eq!(spec.python.to_string(), "3.11");
        assert_eq!(spec.custom_nodes.len(), 2);
        let wheels: usize = spec.optimizations.iter().map(|optimization| optimization.wheels.len()).sum();
        assert_eq!(
            wheels,
            3 * 5 + 2 * 2,
            "torch 2.9's per-SM SageAttention 2 and its SageAttention 3 wheels"
        );
        let sm89 = catalog.sageattention_for("8.9", "cu128", "2.9");
        assert!(text.contains(&format!("url = \"http://127.0.0.1:41234{}\"", sm89.wheel.url_path)));
        assert!(text.contains(&sm89.wheel.wheel.sha256));
        options.sageattention = SageAttentionWheels::Fat;
        let text = catalog.test_spec("http://127.0.0.1:41234", &options);
        let spec = Spec::parse("standin.toml", &text, SpecFormat::Toml).unwrap_or_else(|errors| {
            panic!("the rendered spec does not parse:\n{errors}\n---\n{text}");
        });
        assert_eq!(spec.optimizations[0].wheels.len(), 2, "one stable-ABI wheel per CUDA build");
        assert_eq!(spec.optimizations[0].smoke.as_ref().unwrap().call, "sageattention.sageattn");
    }
}
