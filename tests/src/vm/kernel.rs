//! Debian's stock amd64 kernel for the guest: the `linux-image-amd64`
//! metapackage names the `linux-image-6.1.0-*-amd64` package, whose tree is
//! unpacked once, given a `modules.dep` with `depmod -b`, and cached.
//!
//! A VM gets only the modules it asks for, with their dependencies, plus the
//! crypto and library modules the kernel loads on demand (`crypto-*`
//! aliases through `/sbin/modprobe`), staged into a small tree with its own
//! `depmod` so `modprobe` inside the guest sees a consistent index.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::VmError;
use super::apt::{self, PackageCache, PackageInfo};

const METAPACKAGE: &str = "linux-image-amd64";

/// Module folders always staged: the kernel requests crypto algorithms
/// (e.g. `rfc4106(gcm(aes))` for an ESP SA) and CRC helpers by alias.
const ON_DEMAND_FOLDERS: [&str; 3] = ["kernel/crypto/", "kernel/arch/x86/crypto/", "kernel/lib/"];

#[derive(Debug)]
pub(crate) struct Kernel {
    /// `uname -r` of the guest, e.g. `6.1.0-37-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    modules_dir: PathBuf,
    /// Module name (dashes as underscores) → path relative to `modules_dir`.
    paths: BTreeMap<String, String>,
    /// Path → paths of the modules it depends on (transitively, per depmod).
    deps: BTreeMap<String, Vec<String>>,
    builtin: BTreeSet<String>,
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.trim_end_matches(".ko").replace('-', "_")
}

fn release_of(tree: &Path, package: &PackageInfo) -> Result<String, VmError> {
    let dir = tree.join("lib/modules");
    let entries = std::fs::read_dir(&dir).map_err(VmError::io("listing kernel modules", &dir))?;
    entries
        .filter_map(|e| e.ok())
        .find(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .ok_or_else(|| VmError::KernelLayout {
            package: package.name.clone(),
            what: "lib/modules/<release> folder".into(),
        })
}

/// Runs `depmod -b tree release`: Debian ships no modules.dep in the package.
fn depmod(tree: &Path, release: &str) -> Result<(), VmError> {
    apt::run(Command::new("depmod").arg("-b").arg(tree).arg(release)).map(drop)
}

impl Kernel {
    /// The kernel apt would install today, downloaded and prepared on first use.
    pub fn fetch(cache: &PackageCache) -> Result<Kernel, VmError> {
        let meta = cache
            .resolve(&[METAPACKAGE.to_string()])?
            .into_iter()
            .find(|p| p.name == METAPACKAGE)
            .ok_or_else(|| VmError::PackageNotFound {
                name: METAPACKAGE.into(),
            })?;
        let image = meta
            .depends
            .iter()
            .find(|d| d.starts_with("linux-image-"))
            .ok_or_else(|| VmError::KernelLayout {
                package: METAPACKAGE.into(),
                what: "dependency on a linux-image-* package".into(),
            })?;
        let package = cache
            .resolve(std::slice::from_ref(image))?
            .into_iter()
            .find(|p| &p.name == image)
            .ok_or_else(|| VmError::PackageNotFound {
                name: image.clone(),
            })?;
        let prepare = |p: &PackageInfo, tree: &Path| depmod(tree, &release_of(tree, p)?);
        let tree = cache
            .trees(std::slice::from_ref(&package), &prepare)?
            .remove(0);
        let release = release_of(&tree, &package)?;
        let vmlinuz = tree.join("boot").join(format!("vmlinuz-{release}"));
        if !vmlinuz.is_file() {
            return Err(VmError::KernelLayout {
                package: package.name.clone(),
                what: format!("boot/vmlinuz-{release}"),
            });
        }
        let modules_dir = tree.join("lib/modules").join(&release);
        let dep_file = modules_dir.join("modules.dep");
        let dep_text = std::fs::read_to_string(&dep_file)
            .map_err(VmError::io("reading modules.dep", &dep_file))?;
        let builtin_file = modules_dir.join("modules.builtin");
        let builtin_text = std::fs::read_to_string(&builtin_file)
            .map_err(VmError::io("reading modules.builtin", &builtin_file))?;
        let mut paths = BTreeMap::new();
        let mut deps = BTreeMap::new();
        for line in dep_text.lines() {
            let Some((path, list)) = line.split_once(':') else {
                continue;
            };
            paths.insert(module_name(path), path.to_string());
            deps.insert(
                path.to_string(),
                list.split_whitespace().map(String::from).collect(),
            );
        }
        Ok(Kernel {
            release,
            vmlinuz,
            modules_dir,
            paths,
            deps,
            builtin: builtin_text.lines().map(module_name).collect(),
        })
    }

    /// Module files (relative paths) for `names` and their dependencies, plus
    /// the on-demand folders. Built-in names need no file.
    fn selection(&self, names: &[String]) -> Result<BTreeSet<String>, VmError> {
        let mut wanted: Vec<String> = Vec::new();
        for name in names {
            let key = name.replace('-', "_");
            match self.paths.get(&key) {
                Some(path) => wanted.push(path.clone()),
                None if self.builtin.contains(&key) => {}
                None => {
                    return Err(VmError::ModuleNotFound {
                        module: name.clone(),
                        kernel: self.release.clone(),
                    });
                }
            }
        }
        wanted.extend(
            self.deps
                .keys()
                .filter(|p| ON_DEMAND_FOLDERS.iter().any(|f| p.starts_with(f)))
                .cloned(),
        );
        let mut selected = BTreeSet::new();
        for path in wanted {
            if let Some(list) = self.deps.get(&path) {
                selected.extend(list.iter().cloned());
            }
            selected.insert(path);
        }
        Ok(selected)
    }

    /// Builds `dir/lib/modules/RELEASE` with the selected modules and a fresh
    /// depmod index; returns that folder.
    pub fn stage_modules(&self, names: &[String], dir: &Path) -> Result<PathBuf, VmError> {
        let staged = dir.join("lib/modules").join(&self.release);
        for path in self.selection(names)? {
            let src = self.modules_dir.join(&path);
            let dst = staged.join(&path);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(VmError::io("creating module folder", parent))?;
            }
            // Hard links when the temp dir shares the cache's filesystem.
            if std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst).map_err(VmError::io("copying module", &src))?;
            }
        }
        for index in [
            "modules.order",
            "modules.builtin",
            "modules.builtin.modinfo",
        ] {
            let src = self.modules_dir.join(index);
            if src.is_file() {
                std::fs::copy(&src, staged.join(index))
                    .map_err(VmError::io("copying module index", &src))?;
            }
        }
        depmod(dir, &self.release)?;
        Ok(staged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_use_underscores() {
        assert_eq!(
            module_name("kernel/drivers/nvme/target/nvmet-tcp.ko"),
            "nvmet_tcp"
        );
        assert_eq!(module_name("kernel/net/ipv4/esp4.ko"), "esp4");
    }
}
