//! `qemu-system-x86_64`: finding it, choosing the accelerator, and owning
//! the process so it dies with the test.
//!
//! TCG is the default. KVM is used only after a probe boot on this host
//! printed its marker (RIG.md: `/dev/kvm` exists here but a KVM guest hangs in
//! firmware); the verdict is cached per host kernel, QEMU and guest kernel.
//! `DPU_VM_ACCEL=tcg|kvm` overrides the probe.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::VmError;
use super::apt;

pub(crate) const QEMU: &str = "qemu-system-x86_64";

const PROBE_MARKER: &str = "DPU-VM-ACCEL-PROBE-OK";
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

fn qemu_output(args: &[&str]) -> Result<String, VmError> {
    let mut cmd = Command::new(QEMU);
    cmd.args(args);
    match cmd.output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(VmError::QemuMissing {
            binary: QEMU.into(),
        }),
        Err(source) => Err(VmError::Spawn {
            command: apt::describe(&cmd),
            source,
        }),
        Ok(out) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
    }
}

/// First line of `qemu-system-x86_64 --version`.
pub(crate) fn version() -> Result<String, VmError> {
    static VERSION: OnceLock<String> = OnceLock::new();
    if let Some(v) = VERSION.get() {
        return Ok(v.clone());
    }
    let text = qemu_output(&["--version"])?;
    let line = text
        .lines()
        .next()
        .unwrap_or("QEMU (unknown version)")
        .to_string();
    Ok(VERSION.get_or_init(|| line).clone())
}

/// Fails unless this QEMU has every device model in `names`.
pub(crate) fn require_devices(names: &[&str]) -> Result<(), VmError> {
    static HELP: OnceLock<String> = OnceLock::new();
    let help = match HELP.get() {
        Some(h) => h,
        None => {
            let text = qemu_output(&["-machine", "q35", "-device", "help"])?;
            HELP.get_or_init(|| text)
        }
    };
    for name in names {
        if !help.contains(&format!("name \"{name}\"")) {
            return Err(VmError::QemuLacksDevice {
                version: version()?,
                device: (*name).to_string(),
            });
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Accel::Tcg => &["-accel", "tcg"],
            Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
        }
    }
}

/// Chooses the accelerator. `probe` boots a tiny guest under KVM that prints
/// [`probe_marker`] and powers off; it is called at most once per cache key.
pub(crate) fn choose_accel(
    cache_file: &Path,
    guest_kernel: &str,
    probe: impl FnOnce() -> Result<bool, VmError>,
) -> Result<Accel, VmError> {
    match std::env::var("DPU_VM_ACCEL").as_deref() {
        Ok("tcg") => return Ok(Accel::Tcg),
        Ok("kvm") => return Ok(Accel::Kvm),
        _ => {}
    }
    let kvm_usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !kvm_usable {
        return Ok(Accel::Tcg);
    }
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let key = format!("{} | {} | {}", host_kernel.trim(), version()?, guest_kernel);
    if let Ok(text) = std::fs::read_to_string(cache_file)
        && let Some((cached_key, verdict)) = text.trim().rsplit_once(" => ")
        && cached_key == key
    {
        return Ok(if verdict == "kvm" {
            Accel::Kvm
        } else {
            Accel::Tcg
        });
    }
    let accel = if probe()? { Accel::Kvm } else { Accel::Tcg };
    let verdict = if accel == Accel::Kvm { "kvm" } else { "tcg" };
    // Best effort: without the cache the probe just runs again next time.
    let _ = std::fs::write(cache_file, format!("{key} => {verdict}\n"));
    Ok(accel)
}

pub(crate) fn probe_marker() -> &'static str {
    PROBE_MARKER
}

/// Boots `kernel` + `initrd` under KVM and reports whether the console shows
/// the probe marker before [`PROBE_TIMEOUT`].
pub(crate) fn probe_kvm(kernel: &Path, initrd: &Path, dir: &Path) -> Result<bool, VmError> {
    let console = dir.join("probe-console.log");
    let mut cmd = Command::new(QEMU);
    cmd.args(["-M", "q35"])
        .args(Accel::Kvm.args())
        .args([
            "-m",
            "256",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .args(["-no-reboot", "-serial"])
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"]);
    let mut process = QemuProcess::spawn(cmd, &dir.join("probe-qemu.log"))?;
    let exited = process.wait_until(Instant::now() + PROBE_TIMEOUT)?;
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    Ok(exited.is_some() && text.contains(PROBE_MARKER))
}

/// A running QEMU that is killed and reaped when dropped, on every path.
#[derive(Debug)]
pub(crate) struct QemuProcess {
    child: Option<Child>,
    pub log: PathBuf,
}

impl QemuProcess {
    /// Starts `cmd` with stdin closed and QEMU's own messages in `log`.
    pub fn spawn(mut cmd: Command, log: &Path) -> Result<QemuProcess, VmError> {
        let file = std::fs::File::create(log).map_err(VmError::io("creating QEMU log", log))?;
        let file2 = file
            .try_clone()
            .map_err(VmError::io("creating QEMU log", log))?;
        cmd.stdin(Stdio::null()).stdout(file).stderr(file2);
        // SAFETY: prctl is async-signal-safe and touches only the child. It
        // makes the kernel kill QEMU if the test process dies without
        // running destructors (SIGKILL, abort).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let command = apt::describe(&cmd);
        let child = cmd.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                VmError::QemuMissing {
                    binary: QEMU.into(),
                }
            } else {
                VmError::Spawn { command, source }
            }
        })?;
        Ok(QemuProcess {
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// Waits for QEMU to exit until `deadline`; `None` if it is still running.
    pub fn wait_until(&mut self, deadline: Instant) -> Result<Option<String>, VmError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(Some("already reaped".into()));
        };
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Ok(Some(status.to_string()));
                }
                Ok(None) if Instant::now() >= deadline => return Ok(None),
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(VmError::io("waiting for QEMU", &self.log)(e)),
            }
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
