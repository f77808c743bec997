//! Reading a spec file named on the command line (`-` is standard input).

use std::io::Read;
use std::path::Path;

use comfyfleet_config::spec::{Spec, SpecFormat};

/// A spec as read: its text (sent as-is to the controller), format and name.
#[derive(Debug)]
pub struct SpecFile {
    pub name: String,
    pub text: String,
    pub format: SpecFormat,
    pub spec: Spec,
}

pub fn load(path: &Path) -> anyhow::Result<SpecFile> {
    let (name, text) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| anyhow::anyhow!("cannot read the spec from stdin: {e}"))?;
        ("<stdin>".to_owned(), text)
    } else {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the spec {}: {e}", path.display()))?;
        (path.display().to_string(), text)
    };
    let format = SpecFormat::detect(&name, &text);
    let spec = Spec::parse(&name, &text, format).map_err(|errors| {
        let count = errors.0.len();
        anyhow::anyhow!(
            "{name} is not a valid spec ({count} problem{}):\n{errors}",
            if count == 1 { "" } else { "s" }
        )
    })?;
    Ok(SpecFile { name, text, format, spec })
}
