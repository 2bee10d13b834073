//! The guest's root filesystem: a gzip-compressed cpio `newc` archive built
//! in memory order from unpacked Debian packages, staged kernel modules,
//! project binaries and generated files, plus the `/init` that runs a test.
//!
//! The tree is merged-/usr (`/bin`, `/sbin`, `/lib`, `/lib64` are symlinks into
//! `/usr`), so packages that ship the same file under `/lib` and `/usr/lib`
//! meet in one place. Owners are root and timestamps zero, so the archive
//! depends only on its inputs.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use super::VmError;

/// Package paths never copied into the guest: documentation and data no
/// test reads, to keep the initramfs (and its unpacking under TCG) small.
const SKIPPED: [&str; 10] = [
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bash-completion",
    "usr/share/zsh",
    "usr/share/bug",
    "usr/lib/x86_64-linux-gnu/gconv",
    "boot",
];

const MERGED: [(&str, &str); 4] = [
    ("bin", "usr/bin"),
    ("sbin", "usr/sbin"),
    ("lib", "usr/lib"),
    ("lib64", "usr/lib64"),
];

#[derive(Debug, Clone)]
enum Entry {
    Dir,
    File { source: PathBuf, mode: u32 },
    Data { bytes: Vec<u8>, mode: u32 },
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

/// A filesystem tree to be written as an initramfs; keys are guest paths
/// without the leading `/`.
#[derive(Debug)]
pub(crate) struct Tree {
    entries: BTreeMap<PathBuf, Entry>,
}

/// Maps a package path to its place in a merged-/usr tree.
fn merged_path(rel: &Path) -> PathBuf {
    let mut components = rel.components();
    if let Some(Component::Normal(first)) = components.next() {
        for (from, to) in MERGED {
            if first == from {
                return Path::new(to).join(components.as_path());
            }
        }
    }
    rel.to_path_buf()
}

impl Tree {
    pub fn new() -> Tree {
        let mut tree = Tree {
            entries: BTreeMap::new(),
        };
        for (from, to) in MERGED {
            tree.insert(PathBuf::from(to), Entry::Dir);
            tree.insert(PathBuf::from(from), Entry::Symlink(to.to_string()));
        }
        for dir in [
            "dev",
            "proc",
            "sys",
            "tmp",
            "run",
            "root",
            "out",
            "etc",
            "mnt",
            "usr/local/bin",
        ] {
            tree.insert(PathBuf::from(dir), Entry::Dir);
        }
        // The kernel opens /dev/console for init before devtmpfs is mounted.
        tree.insert(
            PathBuf::from("dev/console"),
            Entry::CharDevice { major: 5, minor: 1 },
        );
        tree.insert(
            PathBuf::from("dev/null"),
            Entry::CharDevice { major: 1, minor: 3 },
        );
        tree.add_data("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644);
        tree.add_data("etc/group", b"root:x:0:\n", 0o644);
        tree.add_data("etc/hosts", b"127.0.0.1 localhost\n::1 localhost\n", 0o644);
        tree
    }

    fn insert(&mut self, path: PathBuf, entry: Entry) {
        let mut parent = path.parent();
        while let Some(dir) = parent.filter(|p| !p.as_os_str().is_empty()) {
            self.entries.entry(dir.to_path_buf()).or_insert(Entry::Dir);
            parent = dir.parent();
        }
        // A directory never replaces a file or link already there.
        if matches!(entry, Entry::Dir) && self.entries.contains_key(&path) {
            return;
        }
        self.entries.insert(path, entry);
    }

    pub fn contains(&self, guest: &str) -> bool {
        self.entries.contains_key(Path::new(guest))
    }

    pub fn add_data(&mut self, guest: &str, bytes: &[u8], mode: u32) {
        let path = merged_path(Path::new(guest.trim_start_matches('/')));
        self.insert(
            path,
            Entry::Data {
                bytes: bytes.to_vec(),
                mode,
            },
        );
    }

    pub fn add_file(&mut self, guest: &str, source: &Path, mode: u32) {
        let path = merged_path(Path::new(guest.trim_start_matches('/')));
        self.insert(
            path,
            Entry::File {
                source: source.to_path_buf(),
                mode,
            },
        );
    }

    pub fn add_symlink(&mut self, guest: &str, target: &str) {
        let path = merged_path(Path::new(guest.trim_start_matches('/')));
        self.insert(path, Entry::Symlink(target.to_string()));
    }

    /// Copies a whole tree (an unpacked package, staged modules) to `at`.
    pub fn add_tree(&mut self, source: &Path, at: &str) -> Result<(), VmError> {
        self.walk(source, Path::new(at.trim_start_matches('/')))
    }

    fn walk(&mut self, dir: &Path, rel: &Path) -> Result<(), VmError> {
        let entries = std::fs::read_dir(dir).map_err(VmError::io("reading folder", dir))?;
        for entry in entries {
            let entry = entry.map_err(VmError::io("reading folder", dir))?;
            let source = entry.path();
            let rel = rel.join(entry.file_name());
            let guest = merged_path(&rel);
            if SKIPPED.iter().any(|s| guest.starts_with(s)) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&source)
                .map_err(VmError::io("reading file metadata", &source))?;
            let kind = meta.file_type();
            if kind.is_symlink() {
                let target =
                    std::fs::read_link(&source).map_err(VmError::io("reading symlink", &source))?;
                self.insert(guest, Entry::Symlink(target.to_string_lossy().into_owned()));
            } else if kind.is_dir() {
                self.insert(guest, Entry::Dir);
                self.walk(&source, &rel)?;
            } else if kind.is_file() {
                let mode = meta.permissions().mode() & 0o7777;
                self.insert(guest, Entry::File { source, mode });
            }
        }
        Ok(())
    }

    /// Writes the tree as a gzip-compressed cpio newc archive. Compression
    /// runs in `gzip -1` (Debian-essential): a Rust deflater in an
    /// unoptimized test build takes seconds for the ~40 MB tree.
    pub fn write(&self, out: &Path) -> Result<(), VmError> {
        let file = File::create(out).map_err(VmError::io("creating initramfs", out))?;
        let mut gzip = Command::new("gzip")
            .args(["-1", "-c"])
            .stdin(Stdio::piped())
            .stdout(file)
            .spawn()
            .map_err(|source| VmError::Spawn {
                command: "gzip -1 -c".into(),
                source,
            })?;
        let Some(stdin) = gzip.stdin.take() else {
            return Err(VmError::io("writing initramfs", out)(
                std::io::Error::other("gzip has no stdin"),
            ));
        };
        let mut cpio = NewcWriter::new(BufWriter::with_capacity(1 << 20, stdin));
        let result = (|| -> std::io::Result<()> {
            for (path, entry) in &self.entries {
                let name = path.to_string_lossy();
                match entry {
                    Entry::Dir => cpio.entry(&name, 0o040755, 0, &[])?,
                    Entry::Data { bytes, mode } => cpio.entry(&name, 0o100000 | mode, 0, bytes)?,
                    Entry::Symlink(target) => cpio.entry(&name, 0o120777, 0, target.as_bytes())?,
                    Entry::CharDevice { major, minor } => {
                        cpio.entry(&name, 0o020600, (*major << 8) | minor, &[])?
                    }
                    Entry::File { source, mode } => {
                        let bytes = std::fs::read(source)?;
                        cpio.entry(&name, 0o100000 | mode, 0, &bytes)?
                    }
                }
            }
            cpio.finish()?.flush()
        })();
        // Wait even after a write error, so no gzip is left behind.
        let status = gzip.wait();
        result.map_err(VmError::io("writing initramfs", out))?;
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(VmError::Command {
                command: "gzip -1 -c".into(),
                status: s.to_string(),
                stderr: String::new(),
            }),
            Err(e) => Err(VmError::io("waiting for gzip", out)(e)),
        }
    }
}

/// The SVR4 "newc" cpio format the kernel unpacks (see the kernel's
/// Documentation/driver-api/early-userspace/buffer-format.rst).
struct NewcWriter<W: Write> {
    out: W,
    written: u64,
    inode: u32,
}

impl<W: Write> NewcWriter<W> {
    fn new(out: W) -> Self {
        NewcWriter {
            out,
            written: 0,
            inode: 1,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> std::io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }

    /// One entry; `rdev` is `major << 8 | minor` for device nodes.
    fn entry(&mut self, name: &str, mode: u32, rdev: u32, data: &[u8]) -> std::io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| std::io::Error::other(format!("{name} is larger than 4 GiB")))?;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            size,
            0, // devmajor
            0, // devminor
            rdev >> 8,
            rdev & 0xff,
            name.len() + 1,
            0, // check
        );
        self.inode += 1;
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn finish(mut self) -> std::io::Result<W> {
        self.entry("TRAILER!!!", 0, 0, &[])?;
        Ok(self.out)
    }
}

/// What `/init` needs to know about the run.
#[derive(Debug)]
pub(crate) struct InitConfig<'a> {
    pub modules: &'a [String],
    pub script_timeout_secs: u64,
    /// MAC of the NIC that carries host forwards, configured as 10.0.2.15/24
    /// (QEMU user-mode networking's guest address).
    pub forward_nic_mac: Option<&'a str>,
    /// NICs on socket links: (MAC, name) — each renamed and set up before
    /// the script runs.
    pub links: &'a [(String, String)],
}

/// Guest path of the test script.
pub(crate) const SCRIPT_PATH: &str = "/etc/dpu-vm/script.sh";

/// The guest's PID 1. It reports through the 9p share mounted at /out:
/// `status`, `stdout`, `stderr`, `dmesg`, `files/` (the script's
/// `$DPU_VM_OUT`), `timed-out` when the watchdog fired, and `init-error`
/// when the VM could not be set up. Console markers mirror the outcome.
pub(crate) fn init_script(config: &InitConfig<'_>) -> String {
    let modules = config.modules.join(" ");
    let timeout = config.script_timeout_secs;
    let net = match config.forward_nic_mac {
        Some(mac) => format!(
            r#"for d in /sys/class/net/*; do [ "$(cat "$d/address")" = "{mac}" ] && DPU_VM_NET_IF=${{d##*/}}; done
[ -n "$DPU_VM_NET_IF" ] || fail "no netdev with MAC {mac} (is its driver loaded?)"
ip link set "$DPU_VM_NET_IF" up && ip addr add 10.0.2.15/24 dev "$DPU_VM_NET_IF" \
  && ip route add default via 10.0.2.2 || fail "cannot configure $DPU_VM_NET_IF"
export DPU_VM_NET_IF
"#
        ),
        None => String::new(),
    };
    let mut links = String::new();
    for (mac, name) in config.links {
        links.push_str(&format!(
            r#"L=; for d in /sys/class/net/*; do [ "$(cat "$d/address")" = "{mac}" ] && L=${{d##*/}}; done
[ -n "$L" ] || fail "no netdev with MAC {mac} for link {name}"
{{ [ "$L" = "{name}" ] || ip link set dev "$L" name "{name}"; }} && ip link set "{name}" up || fail "cannot name $L {name}"
"#
        ));
    }
    let net = net + &links;
    format!(
        r#"#!/bin/sh
# PID 1 of a dpu_tests::vm guest (generated by tests/src/vm/initramfs.rs).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
OUT_OK=
fail() {{
    echo "DPU-VM-ERROR $*"
    [ -n "$OUT_OK" ] && {{ echo "$*" > /out/init-error; dmesg > /out/dmesg; sync; umount /out; }}
    poweroff -f
}}
modprobe -a virtio_pci 9pnet_virtio 9p || fail "cannot load virtio_pci/9p modules"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 dpuout /out || fail "cannot mount the 9p share"
OUT_OK=1
modprobe configfs && mount -t configfs configfs /sys/kernel/config || fail "cannot mount configfs"
ip link set lo up
for m in {modules}; do
    modprobe "$m" 2>/tmp/modprobe.err || fail "modprobe $m: $(cat /tmp/modprobe.err)"
done
{net}mkdir -p /out/files
export DPU_VM_OUT=/out/files
cd /tmp
echo "DPU-VM-SCRIPT-START"
/bin/sh {SCRIPT_PATH} </dev/null >/out/stdout 2>/out/stderr &
pid=$!
( sleep {timeout}; echo {timeout} > /out/timed-out; kill -KILL $pid ) &
dog=$!
wait $pid
status=$?
kill $dog 2>/dev/null
dmesg > /out/dmesg
echo $status > /out/status
sync
umount /out
echo "DPU-VM-RESULT status=$status"
poweroff -f
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_usr() {
        assert_eq!(
            merged_path(Path::new("sbin/modprobe")),
            Path::new("usr/sbin/modprobe")
        );
        assert_eq!(
            merged_path(Path::new("lib/x86_64-linux-gnu/libc.so.6")),
            Path::new("usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(merged_path(Path::new("etc/hosts")), Path::new("etc/hosts"));
    }

    #[test]
    fn newc_entries_are_aligned_and_terminated() {
        let mut w = NewcWriter::new(Vec::new());
        w.entry("init", 0o100755, 0, b"#!/bin/sh\n").unwrap();
        let bytes = w.finish().unwrap();
        assert!(bytes.starts_with(b"070701"));
        // Header (110) + "init\0" (5) padded to 116, then 10 data bytes padded to 128.
        assert_eq!(&bytes[110..115], b"init\0");
        assert_eq!(&bytes[116..126], b"#!/bin/sh\n");
        assert_eq!(&bytes[128..134], b"070701");
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
