//! Debian packages for the guest: versions from the host's apt lists
//! (`apt-cache show`), `.deb`s from `apt-get download`, trees from `dpkg-deb -x`,
//! all cached under [`super::cache_dir`] keyed by name and version.
//!
//! Only shared-library dependencies are followed (package names `lib*` and
//! `zlib1g`); tools a package merely calls (debconf, uuid-runtime, ...) are
//! left out, so a test that needs one asks for it by name. The apt lists
//! decide the version: after `apt-get update` a newer kernel or library lands
//! in a new cache entry and old entries stay until the cache is deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::VmError;

/// One package at the version apt would install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PackageInfo {
    pub name: String,
    pub version: String,
    /// First alternative of each `Depends` and `Pre-Depends` entry.
    pub depends: Vec<String>,
}

impl PackageInfo {
    /// File-name-safe cache key: `name_version` with the epoch colon escaped
    /// the way apt spells it in `.deb` names.
    pub fn key(&self) -> String {
        format!("{}_{}", self.name, self.version.replace(':', "%3a"))
    }
}

/// Runs a command, mapping failure to an error that names the command and
/// carries the tail of its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<Output, VmError> {
    let command = describe(cmd);
    let out = cmd.output().map_err(|source| VmError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(VmError::Command {
            command,
            status: out.status.to_string(),
            stderr: super::tail(&String::from_utf8_lossy(&out.stderr), 8),
        });
    }
    Ok(out)
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Asks apt for the candidate version and dependencies of `names`.
/// Names apt does not know are absent from the result.
fn show(names: &[String]) -> Result<Vec<PackageInfo>, VmError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut cmd = Command::new("apt-cache");
    cmd.args(["show", "--no-all-versions", "--"]).args(names);
    let command = describe(&cmd);
    // apt-cache exits 100 when any one name is unknown but still prints the
    // others; the caller checks which names came back.
    let out = cmd
        .output()
        .map_err(|source| VmError::Spawn { command, source })?;
    Ok(parse_show(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses `apt-cache show` stanzas.
pub(crate) fn parse_show(text: &str) -> Vec<PackageInfo> {
    let mut result = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: BTreeMap<&str, String> = BTreeMap::new();
        let mut last: Option<&str> = None;
        for line in stanza.lines() {
            if line.starts_with(' ') {
                if let Some(key) = last
                    && let Some(value) = fields.get_mut(key)
                {
                    value.push_str(line);
                }
            } else if let Some((key, value)) = line.split_once(':') {
                fields.insert(key, value.trim().to_string());
                last = Some(key);
            }
        }
        let (Some(name), Some(version)) = (fields.get("Package"), fields.get("Version")) else {
            continue;
        };
        let mut depends = Vec::new();
        for field in ["Pre-Depends", "Depends"] {
            if let Some(list) = fields.get(field) {
                depends.extend(list.split(',').filter_map(first_alternative));
            }
        }
        result.push(PackageInfo {
            name: name.clone(),
            version: version.clone(),
            depends,
        });
    }
    result
}

fn first_alternative(entry: &str) -> Option<String> {
    let first = entry.split('|').next()?.trim();
    let name = first.split([' ', '(']).next()?.trim();
    let name = name.split(':').next()?;
    (!name.is_empty()).then(|| name.to_string())
}

/// Whether a dependency is a shared library the guest needs to run the
/// package's binaries.
fn is_library_package(name: &str) -> bool {
    let library = name.starts_with("lib") || name == "zlib1g";
    let not_tools = !["-bin", "-common", "-data", "-dev", "-modules", "-utils"]
        .iter()
        .any(|suffix| name.ends_with(suffix));
    library && not_tools
}

/// Resolves `roots` and their shared-library dependencies, transitively.
pub(crate) fn resolve(roots: &[String]) -> Result<Vec<PackageInfo>, VmError> {
    let mut found: BTreeMap<String, PackageInfo> = BTreeMap::new();
    let mut asked: BTreeSet<String> = BTreeSet::new();
    let mut wave: Vec<String> = roots.to_vec();
    let mut first = true;
    while !wave.is_empty() {
        asked.extend(wave.iter().cloned());
        let infos = show(&wave)?;
        if first {
            for name in &wave {
                if !infos.iter().any(|p| &p.name == name) {
                    return Err(VmError::PackageNotFound { name: name.clone() });
                }
            }
            first = false;
        }
        let mut next = BTreeSet::new();
        for info in infos {
            for dep in &info.depends {
                if is_library_package(dep) && !asked.contains(dep) {
                    next.insert(dep.clone());
                }
            }
            found.insert(info.name.clone(), info);
        }
        // A dependency apt cannot show is a virtual package; a real library
        // missing from it shows up as a loader error inside the guest.
        wave = next.into_iter().collect();
    }
    Ok(found.into_values().collect())
}

/// Removes run and download folders a killed test process left behind
/// (older than a day, so no live run loses its files).
fn remove_stale(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    let day = std::time::Duration::from_secs(24 * 3600);
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > day);
        if old {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Hash of `roots` and the size and mtime of every apt list file: changes
/// when `apt-get update` brings new lists.
fn lists_fingerprint(roots: &[String]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    roots.hash(&mut hasher);
    let mut lists: Vec<(String, u64, Option<std::time::SystemTime>)> =
        std::fs::read_dir("/var/lib/apt/lists")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((
                    e.file_name().to_string_lossy().into_owned(),
                    meta.len(),
                    meta.modified().ok(),
                ))
            })
            .collect();
    lists.sort();
    lists.hash(&mut hasher);
    hasher.finish()
}

fn parse_resolved(text: &str) -> Vec<PackageInfo> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let name = fields.next()?.to_string();
            let version = fields.next()?.to_string();
            let depends = fields
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(String::from)
                .collect();
            Some(PackageInfo {
                name,
                version,
                depends,
            })
        })
        .collect()
}

/// The package cache: `debs/` holds downloads, `pkgs/KEY/` unpacked trees.
#[derive(Debug)]
pub(crate) struct PackageCache {
    root: PathBuf,
}

impl PackageCache {
    pub fn new(root: &Path) -> Result<Self, VmError> {
        for sub in ["debs", "pkgs", "tmp"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(VmError::io("creating cache folder", &dir))?;
        }
        remove_stale(&root.join("tmp"));
        Ok(PackageCache {
            root: root.to_path_buf(),
        })
    }

    /// [`resolve`], remembered per set of names and state of the apt lists
    /// (each `apt-cache` call costs ~0.6 s here; resolving takes several).
    pub fn resolve(&self, roots: &[String]) -> Result<Vec<PackageInfo>, VmError> {
        let file = self
            .root
            .join("resolved")
            .join(format!("{:016x}", lists_fingerprint(roots)));
        if let Ok(text) = std::fs::read_to_string(&file) {
            let parsed = parse_resolved(&text);
            if !parsed.is_empty() {
                return Ok(parsed);
            }
        }
        let resolved = resolve(roots)?;
        let mut text = String::new();
        for p in &resolved {
            text.push_str(&format!(
                "{}\t{}\t{}\n",
                p.name,
                p.version,
                p.depends.join(" ")
            ));
        }
        // Best effort: without it the next run asks apt again. Written
        // beside and renamed, so a test process running at the same time
        // never reads half a list.
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let staged = file.with_extension(format!("tmp{}", std::process::id()));
        // A write that failed part way, or a rename that failed, leaves
        // nothing behind.
        if std::fs::write(&staged, text)
            .and_then(|()| std::fs::rename(&staged, &file))
            .is_err()
        {
            let _ = std::fs::remove_file(&staged);
        }
        Ok(resolved)
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Unpacked trees of `packages`, downloading and unpacking what the
    /// cache lacks. `prepare` runs once on a fresh tree before it is published
    /// (renamed into place), so a tree in the cache is always complete.
    pub fn trees(
        &self,
        packages: &[PackageInfo],
        prepare: &dyn Fn(&PackageInfo, &Path) -> Result<(), VmError>,
    ) -> Result<Vec<PathBuf>, VmError> {
        let missing: Vec<&PackageInfo> = packages
            .iter()
            .filter(|p| !self.tree_path(p).is_dir() && !self.deb_path(p).is_file())
            .collect();
        self.download(&missing)?;
        let mut trees = Vec::new();
        for package in packages {
            let tree = self.tree_path(package);
            if !tree.is_dir() {
                self.unpack(package, prepare)?;
            }
            trees.push(tree);
        }
        Ok(trees)
    }

    fn deb_path(&self, package: &PackageInfo) -> PathBuf {
        self.root
            .join("debs")
            .join(format!("{}.deb", package.key()))
    }

    fn tree_path(&self, package: &PackageInfo) -> PathBuf {
        self.root.join("pkgs").join(package.key())
    }

    fn download(&self, packages: &[&PackageInfo]) -> Result<(), VmError> {
        if packages.is_empty() {
            return Ok(());
        }
        let tmp = tempfile::Builder::new()
            .prefix("download-")
            .tempdir_in(self.tmp_dir())
            .map_err(VmError::io("creating download folder", self.tmp_dir()))?;
        let mut cmd = Command::new("apt-get");
        cmd.current_dir(tmp.path()).args(["download", "-q"]);
        for p in packages {
            cmd.arg(format!("{}={}", p.name, p.version));
        }
        run(&mut cmd)?;
        let files: Vec<PathBuf> = std::fs::read_dir(tmp.path())
            .map_err(VmError::io("listing downloads", tmp.path()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        for p in packages {
            let prefix = format!("{}_", p.name);
            let file = files
                .iter()
                .find(|f| {
                    f.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
                })
                .ok_or_else(|| VmError::PackageNotFound {
                    name: p.name.clone(),
                })?;
            let dest = self.deb_path(p);
            std::fs::rename(file, &dest).map_err(VmError::io("storing download", &dest))?;
        }
        Ok(())
    }

    fn unpack(
        &self,
        package: &PackageInfo,
        prepare: &dyn Fn(&PackageInfo, &Path) -> Result<(), VmError>,
    ) -> Result<(), VmError> {
        let tmp = tempfile::Builder::new()
            .prefix("unpack-")
            .tempdir_in(self.tmp_dir())
            .map_err(VmError::io("creating unpack folder", self.tmp_dir()))?;
        let staged = tmp.path().join("tree");
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(self.deb_path(package))
            .arg(&staged))?;
        prepare(package, &staged)?;
        let dest = self.tree_path(package);
        match std::fs::rename(&staged, &dest) {
            Ok(()) => Ok(()),
            // Another test process published the same tree first.
            Err(_) if dest.is_dir() => Ok(()),
            Err(e) => Err(VmError::io("publishing unpacked package", &dest)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_candidate_stanzas_and_first_alternatives() {
        let text = "Package: iproute2\nVersion: 6.1.0-3\nDepends: debconf (>= 0.5) | debconf-2.0, libbpf1 (>= 1:0.6.0),\n libc6 (>= 2.34), libcap2-bin\nDescription: x\n\nPackage: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\nPre-Depends: libc6:any\n";
        let parsed = parse_show(text);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].name, "iproute2");
        assert_eq!(
            parsed[0].depends,
            ["debconf", "libbpf1", "libc6", "libcap2-bin"]
        );
        assert_eq!(parsed[1].key(), "busybox-static_1%3a1.35.0-4+deb12u1+b1");
        assert_eq!(parsed[1].depends, ["libc6"]);
    }

    #[test]
    fn follows_only_shared_libraries() {
        assert!(is_library_package("libc6"));
        assert!(is_library_package("zlib1g"));
        assert!(!is_library_package("libcap2-bin"));
        assert!(!is_library_package("debconf"));
        assert!(!is_library_package("uuid-runtime"));
    }
}
