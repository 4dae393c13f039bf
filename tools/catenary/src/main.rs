#![forbid(unsafe_code)]
//! `catenary`: Catenary's host tool. `catenary image pack` turns an OCI image into a Catenary
//! image (docs/images.md); the operator commands join it as further subcommands.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use catenary::image::{self, Limits, PackOptions};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "catenary", version, about = "Catenary's host tool")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Catenary images: pack an OCI image, verify a packed one.
    #[command(subcommand)]
    Image(ImageCmd),
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Pack an OCI image layout directory or a `docker save` tarball into a Catenary image
    /// directory (rootfs.squashfs, config.json, image.json). Prints the image digest.
    Pack(PackArgs),
    /// Check a Catenary image directory against its digest; prints the digest.
    Verify {
        dir: PathBuf,
        /// Expected digest (sha256:<hex>); without it, only the files named by image.json are checked.
        #[arg(long)]
        digest: Option<String>,
    },
}

#[derive(Args)]
struct PackArgs {
    /// OCI image layout directory, or a `docker save` tarball.
    input: PathBuf,
    /// Output directory (created; must not exist unless --force).
    #[arg(short, long)]
    output: PathBuf,
    /// Image to take from the input: its tag (org.opencontainers.image.ref.name,
    /// io.containerd.image.name or a docker RepoTag). Needed when the input holds several.
    #[arg(long = "ref")]
    reference: Option<String>,
    /// Replace an existing output directory.
    #[arg(long)]
    force: bool,
    /// Most tar entries over all layers.
    #[arg(long, default_value_t = Limits::default().max_entries)]
    max_entries: u64,
    /// Most bytes of file content over all layers.
    #[arg(long, default_value_t = Limits::default().max_total_bytes)]
    max_bytes: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Image(ImageCmd::Pack(a)) => {
            let opts = PackOptions {
                reference: a.reference,
                limits: Limits { max_entries: a.max_entries, max_total_bytes: a.max_bytes, ..Limits::default() },
                force: a.force,
                progress: std::io::stderr().is_terminal(),
            };
            match image::pack(&a.input, &a.output, &opts) {
                Ok(r) => {
                    for w in &r.warnings {
                        eprintln!("warning: {w}");
                    }
                    eprintln!("packed {} entries into {} ({} bytes of squashfs)", r.nodes, a.output.display(), r.manifest.rootfs.size);
                    println!("{}", r.digest);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("catenary image pack: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Image(ImageCmd::Verify { dir, digest }) => match image::verify(&dir, digest.as_deref()) {
            Ok((d, _)) => {
                println!("{d}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("catenary image verify: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
