//! A sysfs tree built from arbitrary input must never panic the host stub's
//! discovery, nor the DPU function selection, summaries and table drawn
//! from what it found.
//!
//! Input: one entry per line, `PATH=CONTENT` (a file; `hex:` before the
//! content writes bytes, e.g. a config space with a DSN capability) or
//! `PATH -> TARGET` (a relative symlink). Paths are relative to the tree's
//! root and may not leave it; symlink targets may not either, so nothing
//! outside the tree is read. The tree is built under `$TMPDIR`, anew for
//! each input.
#![no_main]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};
use std::sync::LazyLock;

use host_stub::discover::{diff, render_table, scan};
use host_stub::selectors::{bluefield_defaults, select};
use libfuzzer_sys::fuzz_target;

const MAX_ENTRIES: usize = 64;

static ROOT: LazyLock<PathBuf> =
    LazyLock::new(|| std::env::temp_dir().join(format!("dpu-fuzz-sysfs-{}", std::process::id())));

/// `path` below the root, refusing anything that could leave it.
fn inside(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Whether a relative symlink at `link` (relative to the root) to `target`
/// stays inside the root: `../` steps first (through real directories, see
/// [`no_links_above`], so they resolve as written), then names only, each
/// of them a directory or a link that itself stays inside. The kernel's
/// links have that shape (`../../../devices/pci0000:00/...`).
fn target_inside(link: &Path, target: &str) -> bool {
    if target.is_empty() || Path::new(target).is_absolute() {
        return false;
    }
    let mut up = link.components().count() as isize - 1;
    let mut named = false;
    for c in Path::new(target).components() {
        match c {
            Component::ParentDir if !named => up -= 1,
            Component::Normal(_) => named = true,
            Component::CurDir => {}
            _ => return false,
        }
        if up < 0 {
            return false;
        }
    }
    true
}

/// Whether no directory above `rel` is a symlink, so that what is made at
/// `rel` is made inside the root.
fn no_links_above(root: &Path, rel: &Path) -> bool {
    let mut at = root.to_path_buf();
    let parents = rel.components().count().saturating_sub(1);
    rel.components().take(parents).all(|c| {
        at.push(c);
        !fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink())
    })
}

fn unhex(s: &str) -> Vec<u8> {
    s.as_bytes()
        .chunks_exact(2)
        .filter_map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

fn build(root: &Path, text: &str) {
    for line in text.lines().take(MAX_ENTRIES) {
        if let Some((path, target)) = line.split_once(" -> ") {
            let Some(rel) = inside(path) else { continue };
            if !target_inside(&rel, target) || !no_links_above(root, &rel) {
                continue;
            }
            let at = root.join(&rel);
            if let Some(parent) = at.parent() {
                let _ = fs::create_dir_all(parent);
            }
            let _ = symlink(target, at);
        } else if let Some((path, content)) = line.split_once('=') {
            let Some(rel) = inside(path).filter(|r| no_links_above(root, r)) else {
                continue;
            };
            let at = root.join(&rel);
            if let Some(parent) = at.parent() {
                let _ = fs::create_dir_all(parent);
            }
            let bytes = match content.strip_prefix("hex:") {
                Some(h) => unhex(h),
                None => format!("{content}\n").into_bytes(),
            };
            let _ = fs::write(at, bytes);
        } else if let Some(rel) = inside(line).filter(|r| no_links_above(root, r)) {
            let _ = fs::create_dir_all(root.join(rel));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let root = &*ROOT;
    let _ = fs::remove_dir_all(root);
    if fs::create_dir_all(root).is_err() {
        return;
    }
    build(root, text);
    let Ok(found) = scan(root) else {
        return;
    };
    for f in &found {
        let _ = (f.kind(), f.id(), f.api_class(), f.summary());
    }
    let _ = render_table(&found);
    let dpu = select(&bluefield_defaults(), &found);
    let _ = diff(&found, &dpu);
    let _ = diff(&[], &found);
});
