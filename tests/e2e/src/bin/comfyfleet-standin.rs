//! `comfyfleet-standin`: the test stand-ins for PyPI, download.pytorch.org and
//! GitHub, for demo scripts and benchmarks that run outside `cargo test`.
//!
//! ```text
//! comfyfleet-standin serve --dir DIR [--pad-torch-bytes N] [--python-tag cp311] [--port 0]
//! comfyfleet-standin localize-spec --spec config/examples/render-farm.toml --standin DIR/standin.json --out FILE
//! ```
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout, clippy::print_stderr)]

use std::io::Read;
use std::path::PathBuf;
use std::sync::mpsc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use comfyfleet_config::{Spec, SpecFormat};
use comfyfleet_e2e::standin::localize::localize_spec;
use comfyfleet_e2e::standin::{CatalogOptions, Manifest, StandinWorld, system_python};

#[derive(Parser)]
#[command(about = "Local stand-ins for the package indexes and git hosts a comfyfleet agent uses")]
struct Arguments {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Builds the stand-in catalogue and repositories under DIR and serves the index
    /// until SIGTERM, SIGINT or (when stdin is a pipe) stdin closes. Prints the
    /// index's base URL; DIR/standin.json says where everything is.
    Serve {
        #[arg(long)]
        dir: PathBuf,
        /// Makes every torch wheel this many bytes heavier (incompressible), for
        /// benchmarks that need realistic download sizes.
        #[arg(long, default_value_t = 0)]
        pad_torch_bytes: u64,
        /// The CPython tag wheels are built for; default: the system python3's.
        #[arg(long)]
        python_tag: Option<String>,
        /// Port on 127.0.0.1; 0 picks a free one.
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// A wheel file to list on the default index as well (e.g. the uv wheel
        /// agents bootstrap from); may repeat.
        #[arg(long)]
        extra_wheel: Vec<PathBuf>,
    },
    /// Rewrites a spec to use the stand-ins of a running `serve`: Python and wheel
    /// tags, indexes, kernel wheel URLs and digests, git URLs.
    LocalizeSpec {
        #[arg(long)]
        spec: PathBuf,
        /// The standin.json `serve` wrote.
        #[arg(long)]
        standin: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Arguments::parse().command {
        Command::Serve { dir, pad_torch_bytes, python_tag, port, extra_wheel } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let python_tag = python_tag.unwrap_or_else(|| system_python().tag.clone());
            let options = CatalogOptions {
                python_tag,
                torch_padding_bytes: pad_torch_bytes,
                extra_wheels: extra_wheel,
            };
            // Before the URL is printed: a script may signal as soon as it reads it.
            let shutdown = watch_for_shutdown()?;
            let world = StandinWorld::create(&dir, &options, port);
            println!("{}", world.server.base_url());
            eprintln!(
                "comfyfleet-standin: serving {} at {}; manifest {}",
                world.manifest.index_root.display(),
                world.server.base_url(),
                dir.join("standin.json").display()
            );
            let reason = shutdown.recv()?;
            eprintln!("comfyfleet-standin: {reason}; stopping");
            drop(world);
            Ok(())
        }
        Command::LocalizeSpec { spec, standin, out } => {
            let text =
                std::fs::read_to_string(&spec).with_context(|| format!("cannot read {}", spec.display()))?;
            let manifest = Manifest::read(&standin).map_err(anyhow::Error::msg)?;
            let localized =
                localize_spec(&text, &manifest).map_err(|e| anyhow::anyhow!("{}: {e}", spec.display()))?;
            if let Err(errors) = Spec::parse(&out.display().to_string(), &localized, SpecFormat::Toml) {
                bail!("the localised spec does not validate (a stand-in is missing something):\n{errors}");
            }
            std::fs::write(&out, localized).with_context(|| format!("cannot write {}", out.display()))?;
            Ok(())
        }
    }
}

/// Receives a reason on SIGTERM or SIGINT, or when stdin is a pipe and its writer
/// closes it (a parent that dies takes the stand-ins with it). A terminal or
/// /dev/null on stdin is not watched: a script's background job has /dev/null there.
fn watch_for_shutdown() -> anyhow::Result<mpsc::Receiver<&'static str>> {
    let (done, finished) = mpsc::channel::<&'static str>();
    let stdin_is_pipe = rustix::fs::fstat(std::io::stdin())
        .map(|stat| rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Fifo)
        .unwrap_or(false);
    if stdin_is_pipe {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut sink = [0u8; 4096];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(read) if read > 0) {}
            let _ = done.send("stdin closed");
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (mut terminate, mut interrupt) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _context = runtime.enter();
        (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?)
    };
    std::thread::spawn(move || {
        let reason = runtime.block_on(async {
            tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            }
        });
        let _ = done.send(reason);
    });
    Ok(finished)
}
