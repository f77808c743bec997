//! Build classes: what decides which files a machine installs — the venv's Python
//! tag, the CUDA build and the platform, `cp312-cu128-linux_x86_64`. Kernel wheels are
//! not part of it: the spec already pins each one by URL and sha256, and they are
//! installed without their dependencies. A spec names classes to lock
//! (`lock.classes`), a plan falls in one, and a lock is made for one; this module is
//! apart from all three so that each can name a class without importing the others.

use std::fmt;

/// The manylinux level locks are resolved for: what torch's own wheels need.
pub const MANYLINUX: &str = "manylinux_2_28";

/// `cp312`, `cu128`, `x86_64` → `cp312-cu128-linux_x86_64`.
pub fn class_name(python_tag: &str, cuda: &str, platform: &str) -> String {
    format!("{python_tag}-{cuda}-linux_{platform}")
}

/// A build class taken apart: what `--class` and the spec's `lock.classes` name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BuildClass {
    pub python_tag: String,
    pub cuda: String,
    pub platform: String,
}

impl BuildClass {
    pub fn parse(text: &str) -> Result<Self, String> {
        let hint = "a build class is PYTHON-CUDA-linux_ARCH, e.g. cp312-cu128-linux_x86_64";
        let mut parts = text.splitn(3, '-');
        let (Some(python), Some(cuda), Some(platform)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("`{text}` is not a build class: {hint}"));
        };
        let python_ok = python.strip_prefix("cp3").is_some_and(|minor| {
            !minor.is_empty() && minor.len() <= 2 && minor.bytes().all(|b| b.is_ascii_digit())
        });
        let cuda_ok = cuda.strip_prefix("cu").is_some_and(|digits| {
            (3..=4).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
        });
        let arch = platform.strip_prefix("linux_").unwrap_or_default();
        if !python_ok || !cuda_ok || !matches!(arch, "x86_64" | "aarch64") {
            return Err(format!("`{text}` is not a build class: {hint}"));
        }
        Ok(Self { python_tag: python.to_owned(), cuda: cuda.to_owned(), platform: arch.to_owned() })
    }

    /// `3.12` for `cp312`.
    pub fn python_version(&self) -> String {
        let digits = self.python_tag.trim_start_matches("cp");
        format!("{}.{}", &digits[..1], &digits[1..])
    }

    /// uv's `--python-platform` for this class.
    pub fn uv_platform(&self) -> String {
        format!("{}-{MANYLINUX}", self.platform)
    }
}

impl fmt::Display for BuildClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-linux_{}", self.python_tag, self.cuda, self.platform)
    }
}
