//! Named network namespaces, created and removed natively the way iproute2's
//! `ip netns add/del` does: a thread `unshare(CLONE_NEWNET)`s and its
//! `/proc/self/task/<tid>/ns/net` is bind-mounted onto `/run/netns/<name>`,
//! which keeps the namespace alive after the thread ends; deleting is
//! `umount2(MNT_DETACH)` + `unlink`. `ip netns` sees and can use the
//! result, and we can use its namespaces.
//!
//! Work inside a namespace runs on a fresh OS thread that `setns()`s into
//! it and is never reused, so no other task ever runs in the wrong namespace.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where named namespaces live (as in iproute2).
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// `statfs.f_type` of nsfs.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// The path of namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Whether `/run/netns/<name>` is a mounted namespace (not a stale file).
pub fn exists(name: &str) -> bool {
    let Ok(c) = cstring(&path(name)) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; `c` is a valid C string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == NSFS_MAGIC
    }
}

/// Names of the namespaces under `/run/netns`.
pub fn list() -> io::Result<Vec<String>> {
    match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(dir) => Ok(dir
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Makes `/run/netns` a shared mount point, as iproute2 does, so that
/// namespace mounts propagate to mount namespaces made later.
fn prepare_run_dir() -> io::Result<()> {
    std::fs::create_dir_all(NETNS_RUN_DIR)?;
    let dir = cstring(Path::new(NETNS_RUN_DIR))?;
    match mount(c"", &dir, libc::MS_SHARED | libc::MS_REC) {
        Ok(()) => return Ok(()),
        // Not a mount point yet: bind it onto itself, then share it.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        Err(e) => return Err(e),
    }
    mount(&dir, &dir, libc::MS_BIND | libc::MS_REC)?;
    mount(c"", &dir, libc::MS_SHARED | libc::MS_REC)
}

/// mount(2) with `flags` and neither fstype nor data: the bind and
/// propagation mounts that namespaces take.
fn mount(source: &CStr, target: &CStr, flags: libc::c_ulong) -> io::Result<()> {
    // SAFETY: valid C strings; these mounts take no fstype or data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            c"none".as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Creates namespace `name`; an existing one is left as it is.
pub fn create(name: &str) -> io::Result<()> {
    if exists(name) {
        return Ok(());
    }
    prepare_run_dir()?;
    let target = path(name);
    // A stale file (a namespace whose mount went away) is replaced.
    let _ = std::fs::remove_file(&target);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&target)?;
    let target_c = cstring(&target)?;
    let made = std::thread::spawn(move || -> io::Result<()> {
        // SAFETY: unshare affects only this thread, which ends right after.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let source = CString::new(format!("/proc/self/task/{tid}/ns/net"))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        mount(&source, &target_c, libc::MS_BIND)
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")));
    if made.is_err() {
        let _ = std::fs::remove_file(&target);
    }
    made
}

/// Removes namespace `name`; an absent one is not an error. The namespace
/// itself ends when its last user (process, socket, open fd) goes away.
pub fn remove(name: &str) -> io::Result<()> {
    let target = path(name);
    let c = cstring(&target)?;
    // SAFETY: valid C string.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = io::Error::last_os_error();
        // EINVAL: not a mount point (a stale file); ENOENT: already gone.
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
            return Err(e);
        }
    }
    match std::fs::remove_file(&target) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Opens namespace `name` (for `IFLA_NET_NS_FD` or `setns`).
pub fn open(name: &str) -> io::Result<File> {
    File::open(path(name))
}

/// Runs `f` on a new OS thread inside namespace `name`, with its own
/// single-threaded tokio runtime (netlink sockets opened there belong to
/// that namespace), and waits for it without blocking the caller's runtime.
pub async fn run_in<T, F, Fut>(name: &str, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let ns = open(name)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || {
            let result = (|| {
                // SAFETY: `ns` is an open nsfs file; setns affects only this thread.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                drop(ns);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                Ok(rt.block_on(f()))
            })();
            let _ = tx.send(result);
        })?;
    rx.await
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
}
