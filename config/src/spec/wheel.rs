//! Wheel file names (PEP 427): `sageattention-2.2.0+cu128torch2.8-cp312-cp312-linux_x86_64.whl`.
//! The name in a wheel URL is checked against what the spec says the wheel is for,
//! so a cp311 wheel listed under `python = "cp312"` is caught before any download.

use std::str::FromStr;

use pep440_rs::Version;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelName {
    pub filename: String,
    pub distribution: String,
    pub version: Version,
    pub python_tags: Vec<String>,
    pub abi_tags: Vec<String>,
    pub platform_tags: Vec<String>,
}

impl WheelName {
    /// The wheel's file name from its URL (the last path segment, `%2B` decoded).
    pub fn from_url(url: &str) -> Result<Self, String> {
        let path = url.split(['?', '#']).next().unwrap_or(url);
        let last = path.rsplit('/').next().unwrap_or(path);
        let decoded = percent_decode(last);
        Self::parse(&decoded)
    }

    pub fn parse(filename: &str) -> Result<Self, String> {
        let hint = "a wheel URL must end in NAME-VERSION-PYTHON-ABI-PLATFORM.whl, e.g. \
                    sageattention-2.2.0-cp312-cp312-linux_x86_64.whl";
        let stem = filename
            .strip_suffix(".whl")
            .ok_or_else(|| format!("`{filename}` is not a .whl file: {hint}"))?;
        let parts: Vec<&str> = stem.split('-').collect();
        let (distribution, version, python, abi, platform) = match parts.as_slice() {
            [name, version, python, abi, platform] | [name, version, _, python, abi, platform] => {
                (*name, *version, *python, *abi, *platform)
            }
            _ => return Err(format!("`{filename}` is not a wheel file name: {hint}")),
        };
        let version = Version::from_str(version)
            .map_err(|err| format!("`{filename}` has version `{version}` that is not PEP 440 ({err})"))?;
        let tags = |text: &str| text.split('.').map(str::to_owned).collect::<Vec<_>>();
        if distribution.is_empty() || python.is_empty() || abi.is_empty() || platform.is_empty() {
            return Err(format!("`{filename}` has an empty name or tag: {hint}"));
        }
        Ok(Self {
            filename: filename.to_owned(),
            distribution: distribution.to_owned(),
            version,
            python_tags: tags(python),
            abi_tags: tags(abi),
            platform_tags: tags(platform),
        })
    }

    /// Whether a `cp312` interpreter can install this wheel: an exact `cp312`, or an
    /// abi3 wheel built for an older CPython 3, or a pure `py3` wheel.
    pub fn supports_python(&self, python_tag: &str) -> bool {
        let minor = |tag: &str| tag.strip_prefix("cp3").and_then(|rest| rest.parse::<u32>().ok());
        self.python_tags.iter().any(|tag| {
            tag == python_tag
                || tag == "py3"
                || (self.abi_tags.iter().any(|abi| abi == "abi3")
                    && matches!((minor(tag), minor(python_tag)), (Some(built), Some(target)) if built <= target))
        })
    }

    /// Whether the wheel can run on a Linux machine with this `uname -m`.
    pub fn supports_arch(&self, arch: &str) -> bool {
        self.platform_tags.iter().any(|tag| tag == "any" || (tag.contains("linux") && tag.ends_with(arch)))
    }
}

/// `%2B` → `+`: URL path segments as file names.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(value)) => {
                out.push(value);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_names_parse_with_local_versions() {
        let wheel = WheelName::from_url(
            "https://example.org/whl/sageattention-2.2.0%2Bcu128torch2.8-cp312-cp312-linux_x86_64.whl",
        )
        .unwrap();
        assert_eq!(wheel.distribution, "sageattention");
        assert_eq!(wheel.version.to_string(), "2.2.0+cu128torch2.8");
        assert!(wheel.supports_python("cp312") && !wheel.supports_python("cp311"));
        assert!(wheel.supports_arch("x86_64") && !wheel.supports_arch("aarch64"));
    }

    #[test]
    fn abi3_and_build_tags_are_understood() {
        let wheel = WheelName::parse("sageattn3-1.0.0-1-cp39-abi3-manylinux_2_28_x86_64.whl").unwrap();
        assert!(wheel.supports_python("cp312") && wheel.supports_python("cp39"));
        assert!(!wheel.supports_python("cp38"));
        assert!(WheelName::parse("x-1.0.tar.gz").is_err());
        assert!(WheelName::parse("x-notaversion-cp312-cp312-linux_x86_64.whl").is_err());
        assert!(WheelName::parse("x-1.0-cp312.whl").is_err());
    }
}
