//! Writing wheels (PEP 427) that real installers accept: the file name, the
//! `.dist-info` with METADATA, WHEEL and a RECORD whose digests match, optionally a
//! large incompressible padding file so a benchmark can make torch as heavy as the
//! real one.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// A wheel to write: name, version, tags, files and dependencies.
#[derive(Debug, Clone)]
pub struct WheelBuilder {
    name: String,
    version: String,
    python_tag: String,
    abi_tag: String,
    platform_tag: String,
    files: Vec<(String, String)>,
    requires_dist: Vec<String>,
    padding_bytes: u64,
}

/// A wheel on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuiltWheel {
    pub path: PathBuf,
    pub file_name: String,
    /// Of the whole file, lowercase hex: what a spec's `sha256` and an index's
    /// `#sha256=` fragment carry.
    pub sha256: String,
    pub size: u64,
}

impl WheelBuilder {
    /// A pure-Python `py3-none-any` wheel; `version` may carry a local tag (`2.8.0+cu128`).
    pub fn new(name: &str, version: &str) -> Self {
        Self {
            name: name.to_owned(),
            version: version.to_owned(),
            python_tag: "py3".to_owned(),
            abi_tag: "none".to_owned(),
            platform_tag: "any".to_owned(),
            files: Vec::new(),
            requires_dist: Vec::new(),
            padding_bytes: 0,
        }
    }

    /// The compatibility tags, e.g. `("cp311", "cp311", "linux_x86_64")`.
    pub fn tags(mut self, python: &str, abi: &str, platform: &str) -> Self {
        self.python_tag = python.to_owned();
        self.abi_tag = abi.to_owned();
        self.platform_tag = platform.to_owned();
        self
    }

    /// A file inside the wheel, relative to site-packages (`torch/__init__.py`).
    pub fn file(mut self, path: &str, contents: &str) -> Self {
        self.files.push((path.to_owned(), contents.to_owned()));
        self
    }

    /// One `Requires-Dist` line, e.g. `torch==2.8.0`.
    pub fn requires(mut self, requirement: &str) -> Self {
        self.requires_dist.push(requirement.to_owned());
        self
    }

    /// Adds `<package>/_standin_padding.bin` with `bytes` of pseudo-random data,
    /// stored uncompressed, so the wheel weighs about that much on disk and on the wire.
    pub fn padding(mut self, bytes: u64) -> Self {
        self.padding_bytes = bytes;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// The distribution name as the wheel spec writes it in file names: lowercase,
    /// every run of `-`, `_` and `.` one `_` (`comfyui-frontend-package` →
    /// `comfyui_frontend_package`).
    pub fn distribution(&self) -> String {
        normalized_distribution(&self.name)
    }

    /// `{distribution}-{version}-{python}-{abi}-{platform}.whl`.
    pub fn file_name(&self) -> String {
        format!(
            "{}-{}-{}-{}-{}.whl",
            self.distribution(),
            self.version,
            self.python_tag,
            self.abi_tag,
            self.platform_tag
        )
    }

    /// Writes the wheel into `dir` (created if missing) under its file name.
    pub fn write_to(&self, dir: &Path) -> BuiltWheel {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(self.file_name());
        let file = File::create(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        let mut zip = ZipWriter::new(BufWriter::with_capacity(1 << 20, file));
        let mut record = String::new();
        let deflated = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);

        for (name, contents) in &self.files {
            add_entry(&mut zip, &mut record, name, contents.as_bytes(), deflated);
        }
        if self.padding_bytes > 0 {
            let name = format!("{}/_standin_padding.bin", self.top_level_package());
            add_padding(&mut zip, &mut record, &name, self.padding_bytes);
        }
        let dist_info = format!("{}-{}.dist-info", self.distribution(), self.version);
        add_entry(
            &mut zip,
            &mut record,
            &format!("{dist_info}/METADATA"),
            self.metadata().as_bytes(),
            deflated,
        );
        add_entry(
            &mut zip,
            &mut record,
            &format!("{dist_info}/WHEEL"),
            self.wheel_file().as_bytes(),
            deflated,
        );
        record.push_str(&format!("{dist_info}/RECORD,,\n"));
        zip.start_file(format!("{dist_info}/RECORD"), deflated).unwrap();
        zip.write_all(record.as_bytes()).unwrap();
        zip.finish().unwrap().flush().unwrap();

        let (sha256, size) = sha256_of_file(&path);
        BuiltWheel { path, file_name: self.file_name(), sha256, size }
    }

    /// The `.dist-info/METADATA` text, also what an index serves as the wheel's
    /// PEP 658 `.metadata` file.
    pub fn metadata(&self) -> String {
        let mut text = format!("Metadata-Version: 2.1\nName: {}\nVersion: {}\n", self.name, self.version);
        text.push_str("Summary: comfyfleet test stand-in\n");
        for requirement in &self.requires_dist {
            text.push_str(&format!("Requires-Dist: {requirement}\n"));
        }
        text
    }

    fn wheel_file(&self) -> String {
        format!(
            "Wheel-Version: 1.0\nGenerator: comfyfleet-standin\nRoot-Is-Purelib: true\nTag: {}-{}-{}\n",
            self.python_tag, self.abi_tag, self.platform_tag
        )
    }

    /// Where the padding goes: beside the wheel's first package, so uninstalling
    /// the wheel removes it too.
    fn top_level_package(&self) -> String {
        self.files
            .first()
            .and_then(|(path, _)| path.split_once('/').map(|(top, _)| top.to_owned()))
            .unwrap_or_else(|| self.distribution())
    }
}

pub fn normalized_distribution(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('_') {
                out.push('_');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

type WheelZip = ZipWriter<BufWriter<File>>;

fn add_entry(
    zip: &mut WheelZip,
    record: &mut String,
    name: &str,
    contents: &[u8],
    options: SimpleFileOptions,
) {
    zip.start_file(name, options).unwrap();
    zip.write_all(contents).unwrap();
    let digest = urlsafe_base64_nopad(&Sha256::digest(contents));
    record.push_str(&format!("{name},sha256={digest},{}\n", contents.len()));
}

/// Streams `size` bytes from a fixed-seed generator: deterministic (the same
/// builder gives the same sha256), incompressible, and never all in memory.
fn add_padding(zip: &mut WheelZip, record: &mut String, name: &str, size: u64) {
    const FOUR_GIB_MARGIN: u64 = (1 << 32) - (1 << 20);
    let stored = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .large_file(size >= FOUR_GIB_MARGIN);
    zip.start_file(name, stored).unwrap();
    let mut generator = SplitMix64(0x636f_6d66_7966_6c74);
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let take = usize::try_from(left.min(chunk.len() as u64)).unwrap();
        generator.fill(&mut chunk[..take]);
        hasher.update(&chunk[..take]);
        zip.write_all(&chunk[..take]).unwrap();
        left -= take as u64;
    }
    let digest = urlsafe_base64_nopad(&hasher.finalize());
    record.push_str(&format!("{name},sha256={digest},{size}\n"));
}

/// Sebastiano Vigna's splitmix64: tiny, and fast where it matters (release builds,
/// which benchmarks use); rand's generators are generic, so they would be compiled
/// unoptimised into a debug build of this crate and be slower still.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buffer: &mut [u8]) {
        for word in buffer.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
    }
}

/// sha256 and size of a file, hex.
pub fn sha256_of_file(path: &Path) -> (String, u64) {
    let mut file = File::open(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer).unwrap();
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    (hex::encode(hasher.finalize()), size)
}

/// RECORD's digest encoding (PEP 376/427): URL-safe base64 without `=` padding.
pub fn urlsafe_base64_nopad(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [group[0], group.get(1).copied().unwrap_or(0), group.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let symbols = group.len() + 1;
        for i in 0..symbols {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_python_encoding() {
        // base64.urlsafe_b64encode(...).rstrip(b"=")
        assert_eq!(urlsafe_base64_nopad(b""), "");
        assert_eq!(urlsafe_base64_nopad(b"f"), "Zg");
        assert_eq!(urlsafe_base64_nopad(b"fo"), "Zm8");
        assert_eq!(urlsafe_base64_nopad(b"foo"), "Zm9v");
        assert_eq!(urlsafe_base64_nopad(&[0xfb, 0xff, 0xfe]), "-__-");
    }

    #[test]
    fn names_are_normalised_in_file_names_only() {
        let wheel = WheelBuilder::new("ComfyUI-Frontend.Package", "1.45.15");
        assert_eq!(wheel.file_name(), "comfyui_frontend_package-1.45.15-py3-none-any.whl");
        assert!(wheel.metadata().contains("Name: ComfyUI-Frontend.Package\n"));
        let torch = WheelBuilder::new("torch", "2.8.0+cu128").tags("cp311", "cp311", "linux_x86_64");
        assert_eq!(torch.file_name(), "torch-2.8.0+cu128-cp311-cp311-linux_x86_64.whl");
    }

    #[test]
    fn the_record_lists_every_file_with_its_digest_and_the_padding_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let built = WheelBuilder::new("demo-pkg", "1.0")
            .file("demo_pkg/__init__.py", "__version__ = \"1.0\"\n")
            .requires("einops")
            .padding(3 << 20)
            .write_to(dir.path());
        assert!(built.size > 3 << 20 && built.size < (3 << 20) + 4096, "padding is stored: {}", built.size);
        let mut archive = zip::ZipArchive::new(File::open(&built.path).unwrap()).unwrap();
        let mut record = String::new();
        archive.by_name("demo_pkg-1.0.dist-info/RECORD").unwrap().read_to_string(&mut record).unwrap();
        let init = "__version__ = \"1.0\"\n";
        let expected = format!(
            "demo_pkg/__init__.py,sha256={},{}",
            urlsafe_base64_nopad(&Sha256::digest(init)),
            init.len()
        );
        assert!(record.lines().any(|line| line == expected), "{record}");
        assert!(record.lines().any(|line| line.starts_with("demo_pkg/_standin_padding.bin,sha256=")));
        assert!(record.ends_with("demo_pkg-1.0.dist-info/RECORD,,\n"));
        let again = WheelBuilder::new("demo-pkg", "1.0")
            .file("demo_pkg/__init__.py", init)
            .requires("einops")
            .padding(3 << 20)
            .write_to(&dir.path().join("again"));
        assert_eq!(again.sha256, built.sha256, "the same builder writes the same bytes");
    }
}
