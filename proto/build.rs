//! Generates the comfyfleet.v1 code with a vendored protoc, so building needs no
//! system protoc. The descriptor set feeds gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .codec_path("crate::codec::LeanCodec")
        .file_descriptor_set_path(out_dir.join("comfyfleet_v1_descriptor.bin"))
        .compile_with_config(config, &["comfyfleet/v1/fleet.proto"], &["."])?;
    Ok(())
}
