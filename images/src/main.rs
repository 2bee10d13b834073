//! `dpu-image`: the image build's Rust side (see images/README.md).
//!
//!   dpu-image manifest --dir DIR --debian-packages FILE --kernel VER
//!       [--signing-key KEY | --dev-signing-key PATH] ...
//!
//! writes DIR/manifest.json (sha256 of every file in DIR, the Debian
//! packages, the agent's Rust dependencies), DIR/manifest.json.sig (Ed25519,
//! 64 raw bytes) and DIR/manifest.pub.pem.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use dpu_image::manifest::{self, ImageInfo, Manifest};
use dpu_image::sbom;
use dpu_image::signing::SigningKey;

#[derive(Parser)]
#[command(name = "dpu-image", version, about = "DPU image manifest and signing")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write and sign the manifest of an image directory.
    Manifest {
        /// The image directory (artifacts only).
        #[arg(long)]
        dir: PathBuf,
        /// The package list images/build.sh recorded (name, version, arch, source; tabs).
        #[arg(long)]
        debian_packages: PathBuf,
        /// The kernel release in the image, e.g. 6.1.0-56-arm64.
        #[arg(long)]
        kernel: String,
        #[arg(long, default_value = "aarch64-unknown-linux-musl")]
        agent_target: String,
        #[arg(long, default_value = "release")]
        agent_profile: String,
        #[arg(long, default_value = "bookworm")]
        debian_suite: String,
        /// The build's SOURCE_DATE_EPOCH (recorded in the manifest).
        #[arg(long)]
        source_date_epoch: u64,
        /// The signing key (Ed25519, PKCS#8 DER or PEM).
        #[arg(long, conflicts_with = "dev_signing_key")]
        signing_key: Option<PathBuf>,
        /// Sign with the development key at this path, generated when absent.
        #[arg(long)]
        dev_signing_key: Option<PathBuf>,
    },
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Manifest {
            dir,
            debian_packages,
            kernel,
            agent_target,
            agent_profile,
            debian_suite,
            source_date_epoch,
            signing_key,
            dev_signing_key,
        } => {
            let key = match (signing_key, dev_signing_key) {
                (Some(path), _) => SigningKey::load(&path)?,
                (None, Some(path)) => {
                    let (key, fresh) = SigningKey::load_or_generate(&path)?;
                    eprintln!(
                        "dpu-image: signing with the DEVELOPMENT key {}{} — not for shipping (see images/README.md, \"Signing\")",
                        path.display(),
                        if fresh { " (generated now)" } else { "" }
                    );
                    key
                }
                (None, None) => bail!("give --signing-key KEY or --dev-signing-key PATH"),
            };
            let root = workspace_root();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let metadata = output(
                Command::new(&cargo)
                    .current_dir(&root)
                    .args(["metadata", "--format-version", "1", "--locked", "--offline"])
                    .args(["--filter-platform", &agent_target]),
            )?;
            let lock_path = root.join("Cargo.lock");
            let lock = std::fs::read_to_string(&lock_path)
                .with_context(|| format!("cannot read {}", lock_path.display()))?;
            // The image ships two Rust programs: the agent and dpuctl, both
            // built with `--no-default-features` and no feature
            // (images/build.sh): no `dev` in the agent.
            let mut rust_packages = sbom::rust_packages(&metadata, &lock, "dpu-agent", &[])?;
            rust_packages.extend(sbom::rust_packages(&metadata, &lock, "dpuctl", &[])?);
            rust_packages.sort();
            rust_packages.dedup();
            // A crate one program links and the other only builds with is
            // listed once, as linked.
            let linked: std::collections::BTreeSet<(String, String)> = rust_packages
                .iter()
                .filter(|p| p.kind == "runtime")
                .map(|p| (p.name.clone(), p.version.clone()))
                .collect();
            rust_packages.retain(|p| {
                p.kind == "runtime" || !linked.contains(&(p.name.clone(), p.version.clone()))
            });
            let git_commit = output(
                Command::new("git")
                    .current_dir(&root)
                    .args(["rev-parse", "HEAD"]),
            )
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
            let m = Manifest {
                format: manifest::FORMAT.into(),
                image: ImageInfo {
                    name: "dpu-image".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    git_commit,
                    source_date_epoch,
                    architecture: "arm64".into(),
                    debian_suite,
                    kernel,
                    agent_target,
                    agent_profile,
                },
                artifacts: manifest::artifacts(&dir)?,
                debian_packages: manifest::read_debian_packages(&debian_packages)?,
                rust_packages,
            };
            let text = m.to_canonical_json();
            let write = |name: &str, bytes: &[u8]| -> anyhow::Result<()> {
                let path = dir.join(name);
                std::fs::write(&path, bytes)
                    .with_context(|| format!("cannot write {}", path.display()))
            };
            write(manifest::MANIFEST, text.as_bytes())?;
            write(manifest::SIGNATURE, &key.sign(text.as_bytes()))?;
            write(manifest::PUBLIC_KEY, key.public_key_pem().as_bytes())?;
            eprintln!(
                "dpu-image: {} artifacts, {} Debian packages, {} Rust crates; signed by {}",
                m.artifacts.len(),
                m.debian_packages.len(),
                m.rust_packages.len(),
                hex::encode(key.public_key())
            );
        }
    }
    Ok(())
}
