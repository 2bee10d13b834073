//! Build-side tooling of the DPU image (`images/build.sh` calls the
//! `dpu-image` binary): the manifest that lists every artifact's sha256, the
//! Debian packages in the root filesystem and the Rust dependencies of the
//! agent (an SBOM), signed with Ed25519.
//!
//! - [`signing`]: loading or generating the Ed25519 key, the signature, the
//!   public key in the PEM form `openssl pkeyutl` reads.
//! - [`manifest`]: the manifest document and its canonical text.
//! - [`sbom`]: the agent's Rust dependencies from `cargo metadata` and
//!   `Cargo.lock`.
//!
//! Verification is deliberately not here: `images/verify.sh` checks a
//! directory with `sha256sum` and `openssl` only, independent of this code.

pub mod manifest;
pub mod sbom;
pub mod signing;
