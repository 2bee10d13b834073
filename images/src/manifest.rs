//! The image manifest: what the image is built from and the sha256 of every
//! artifact next to it. Its text is canonical (fixed key order, one list
//! entry per line), so the same inputs give the same bytes, and
//! `images/verify.sh` can read the artifact lines with `sed` once the
//! signature over those bytes checked out.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The files a manifest never lists: itself, its signature, its public key.
pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.json.sig";
pub const PUBLIC_KEY: &str = "manifest.pub.pem";
/// The value of the `format` field.
pub const FORMAT: &str = "dpu-image-manifest 1";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {why}")]
    PackageList {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("{path} is not a regular file; the image directory holds only artifacts")]
    NotAFile { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ManifestError + '_ {
    move |source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the image is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    pub version: String,
    pub git_commit: String,
    pub source_date_epoch: u64,
    pub architecture: String,
    pub debian_suite: String,
    pub kernel: String,
    pub agent_target: String,
    pub agent_profile: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DebianPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub source: String,
}

/// One crate compiled into the agent (`runtime`) or run to build it (`build`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RustPackage {
    pub name: String,
    pub version: String,
    /// `registry+https://...`, `git+...`, or `path` for the workspace's own.
    pub source: String,
    /// The sha256 `Cargo.lock` pins (empty for path crates).
    pub checksum: String,
    pub license: String,
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub image: ImageInfo,
    pub artifacts: Vec<Artifact>,
    pub debian_packages: Vec<DebianPackage>,
    pub rust_packages: Vec<RustPackage>,
}

impl Manifest {
    /// The canonical text: fields in declaration order, each list entry
    /// compact on its own line, a final newline.
    pub fn to_canonical_json(&self) -> String {
        fn list<T: Serialize>(name: &str, items: &[T], last: bool) -> String {
            let lines: Vec<String> = items
                .iter()
                .map(|i| format!("    {}", serde_json::to_string(i).expect("serializable")))
                .collect();
            let body = if lines.is_empty() {
                "[]".to_string()
            } else {
                format!("[\n{}\n  ]", lines.join(",\n"))
            };
            format!("  \"{name}\": {body}{}\n", if last { "" } else { "," })
        }
        let mut s = String::from("{\n");
        s.push_str(&format!(
            "  \"format\": {},\n",
            serde_json::to_string(&self.format).expect("string")
        ));
        s.push_str(&format!(
            "  \"image\": {},\n",
            serde_json::to_string(&self.image).expect("serializable")
        ));
        s.push_str(&list("artifacts", &self.artifacts, false));
        s.push_str(&list("debian_packages", &self.debian_packages, false));
        s.push_str(&list("rust_packages", &self.rust_packages, true));
        s.push_str("}\n");
        s
    }
}

/// sha256 and size of every file in `dir` except the manifest's own three,
/// sorted by name. A subdirectory or special file is an error.
pub fn artifacts(dir: &Path) -> Result<Vec<Artifact>, ManifestError> {
    let mut names = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if [MANIFEST, SIGNATURE, PUBLIC_KEY].contains(&name.as_str()) {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if !meta.is_file() {
            return Err(ManifestError::NotAFile { path });
        }
        names.insert(name, path);
    }
    let mut out = Vec::new();
    for (name, path) in names {
        let (sha256, size) = sha256_file(&path)?;
        out.push(Artifact {
            path: name,
            sha256,
            size,
        });
    }
    Ok(out)
}

/// Hex sha256 and length of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<(String, u64), ManifestError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(ctx.finish()), size))
}

/// Reads the package list `images/build.sh` records while extracting the
/// root filesystem: `name<TAB>version<TAB>architecture<TAB>source` per line
/// (source empty when it equals the name, or `name (version)`).
pub fn read_debian_packages(path: &Path) -> Result<Vec<DebianPackage>, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    parse_debian_packages(&text).map_err(|(line, why)| ManifestError::PackageList {
        path: path.to_path_buf(),
        line,
        why,
    })
}

fn parse_debian_packages(text: &str) -> Result<Vec<DebianPackage>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 3 || f.iter().take(3).any(|s| s.trim().is_empty()) {
            return Err((
                i + 1,
                format!(
                    "expected name, version, architecture and source separated by tabs, got {line:?}"
                ),
            ));
        }
        // "src (1.2-3)" names the source and its version; keep the name.
        let source = f
            .get(3)
            .map(|s| s.split_whitespace().next().unwrap_or(""))
            .filter(|s| !s.is_empty())
            .unwrap_or(f[0]);
        out.push(DebianPackage {
            name: f[0].to_string(),
            version: f[1].to_string(),
            architecture: f[2].to_string(),
            source: source.to_string(),
        });
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            image: ImageInfo {
                name: "dpu-image".into(),
                version: "0.1.0".into(),
                git_commit: "abc".into(),
                source_date_epoch: 1,
                architecture: "arm64".into(),
                debian_suite: "bookworm".into(),
                kernel: "6.1.0-1-arm64".into(),
                agent_target: "aarch64-unknown-linux-musl".into(),
                agent_profile: "release".into(),
            },
            artifacts: vec![
                Artifact {
                    path: "Image".into(),
                    sha256: "00".repeat(32),
                    size: 3,
                },
                Artifact {
                    path: "disk.img".into(),
                    sha256: "11".repeat(32),
                    size: 4,
                },
            ],
            debian_packages: vec![DebianPackage {
                name: "openvswitch-switch".into(),
                version: "3.1.0-2+deb12u1".into(),
                architecture: "arm64".into(),
                source: "openvswitch".into(),
            }],
            rust_packages: vec![],
        }
    }

    #[test]
    fn canonical_text_is_json_with_one_artifact_per_line() {
        let m = sample();
        let text = m.to_canonical_json();
        let back: Manifest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
        let artifact_lines: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with("{\"path\":"))
            .collect();
        assert_eq!(artifact_lines.len(), 2, "{text}");
        assert!(artifact_lines[0].contains("\"path\":\"Image\""));
        assert!(text.contains("\"rust_packages\": []\n}"));
        assert_eq!(text, sample().to_canonical_json());
    }

    #[test]
    fn package_list_parses_sources_and_rejects_short_lines() {
        let text = "libssl3\t3.0.17-1~deb12u2\tarm64\topenssl\nbusybox-static\t1:1.35.0-4+b3\tarm64\tbusybox (1:1.35.0-4)\nzlib1g\t1:1.2.13\tarm64\t\n";
        let p = parse_debian_packages(text).unwrap();
        assert_eq!(p[0].name, "busybox-static");
        assert_eq!(p[0].source, "busybox");
        assert_eq!(p[1].source, "openssl");
        assert_eq!(p[2].source, "zlib1g");
        let err = parse_debian_packages("ok\t1\tarm64\t\nbroken line\n").unwrap_err();
        assert_eq!(err.0, 2);
    }

    #[test]
    fn artifacts_are_hashed_sorted_and_skip_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b"), b"abc").unwrap();
        std::fs::write(dir.path().join("a"), b"").unwrap();
        std::fs::write(dir.path().join(MANIFEST), b"{}").unwrap();
        std::fs::write(dir.path().join(SIGNATURE), b"x").unwrap();
        let list = artifacts(dir.path()).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].path, "a");
        // FIPS 180-2 vectors: "" and "abc".
        assert_eq!(
            list[0].sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            list[1].sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(list[1].size, 3);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(matches!(
            artifacts(dir.path()),
            Err(ManifestError::NotAFile { .. })
        ));
    }
}
