//! Models in a revision, as the package cache sees them. A revision's `[[model]]` files are package
//! files like its wheels: registered by sha256 with their URL when the revision is
//! applied, served by `/cache/v1/files/{sha256}/{name}` only to machines whose
//! revisions name them ([`crate::use_cases::package_cache::source_access`]), fetched from upstream at most
//! once and verified before they are kept ([`crate::use_cases::package_cache`]), and fetched
//! by `cache fill` ([`crate::use_cases::environments::revision_files`]). Upstream, a model's credential (a
//! bearer token for Hugging Face) goes with the request to its own origin only: the
//! upstream client drops it on the redirect to Hugging Face's CDN, another host.

use comfyfleet_config::Spec;

use crate::store::PackageFile;

/// The spec's model files, by sha256 (a file two entries name, once).
pub fn model_files(spec: &Spec) -> Vec<PackageFile> {
    let mut files: Vec<PackageFile> = Vec::new();
    for model in &spec.models {
        let Some(sha256) = model.sha256.as_ref().map(ToString::to_string) else { continue };
        if files.iter().any(|file| file.sha256 == sha256) {
            continue;
        }
        let file_name = model.name.rsplit('/').next().unwrap_or(&model.name).to_owned();
        files.push(PackageFile { sha256, url: model.url.clone(), file_name, size: model.size });
    }
    files
}

/// The most bytes the cache accepts for `file`: the package bound, or the file's
/// size where the revision gives one (a 23 GB checkpoint is larger than any wheel).
pub fn size_limit(file: &PackageFile, package_limit: u64) -> u64 {
    match file.size {
        Some(size) => size.max(package_limit),
        None => package_limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revisions_models_are_package_files_once_each() {
        let sha = "a".repeat(64);
        let text = format!(
            "name = \"r\"\npython = \"3.12\"\n[comfyui]\ngit = \"https://example.com/ComfyUI.git\"\nref = \"main\"\n\
             [torch]\nversion = \"2.8.0\"\ncuda = [\"cu128\"]\n\
             [[model]]\nfolder = \"vae\"\nname = \"flux/ae.safetensors\"\nurl = \"https://h.example/ae.safetensors\"\n\
             sha256 = \"{sha}\"\nsize = 40000000000\n\
             [[model]]\nfolder = \"loras\"\nname = \"same.safetensors\"\nurl = \"https://h.example/same\"\nsha256 = \"{sha}\"\n"
        );
        let spec = Spec::parse("spec.toml", &text, comfyfleet_config::SpecFormat::Toml).unwrap();
        let files = model_files(&spec);
        assert_eq!(files.len(), 1, "one file for two names with the same bytes");
        assert_eq!((files[0].file_name.as_str(), files[0].size), ("ae.safetensors", Some(40_000_000_000)));
        assert_eq!(size_limit(&files[0], 16 << 30), 40_000_000_000, "a 40 GB model is within its own size");
    }
}
