//! The DPU image under `qemu-system-aarch64`, driven like a fleet controller
//! would: a fleet PKI that issues the DPU's identity, the provisioning file
//! made with the operators' tool (`images/provision.sh`), and a VM booted
//! from an image directory built by `images/build.sh` (kernel, initramfs, a
//! copy of `disk.img`), reachable through a user-mode network forward.
//!
//! The VM is `-M virt -cpu cortex-a72` under TCG (RIG.md §5; `-cpu max`
//! emulates pointer authentication and is ~3× slower). The provisioning
//! file rides on a second, read-only virtio disk with the serial
//! `dpu-provision`, where the image's first boot looks for it. A boot may
//! carry a test hook ([`test_hook_disk`]): a script on a third read-only
//! disk (serial `dpu-test-hook`) that the image's `dpu-test-hook.service`
//! runs only when the kernel command line has `dpu.test_hook`, which this
//! module adds for such a boot and a shipped image never has. QEMU is
//! killed when the [`ImageVm`] is dropped, and by the kernel if the test
//! process dies first (`PR_SET_PDEATHSIG`).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dpu_api::client::Client;
use dpu_api::identity::Role;
use dpu_pki::{Ca, Identity};

/// The environment variable naming the image directory to boot.
pub const IMAGE_DIR_VAR: &str = "DPU_IMAGE_DIR";

/// The image directory from `DPU_IMAGE_DIR` (a relative path is taken from
/// the workspace root, where `cargo test` is typed). The image test is
/// `#[ignore]`d (a plain `cargo test` reports it as ignored); `images/ci.sh`
/// runs it with `--ignored` and the variable set, and asking for it without
/// the variable fails the test saying what to do.
pub fn image_dir() -> PathBuf {
    match std::env::var_os(IMAGE_DIR_VAR) {
        Some(dir) => workspace_root().join(dir),
        None => panic!(
            "the image test needs {IMAGE_DIR_VAR}=DIR, an image built by `images/build.sh --out DIR` \
             (images/ci.sh does both)"
        ),
    }
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

/// A fleet's CA and the identities it issues for one DPU and its controller.
pub struct FleetPki {
    pub trust_domain: String,
    pub ca: Ca,
    pub server: Identity,
    pub controller: Identity,
}

impl std::fmt::Debug for FleetPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetPki")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl FleetPki {
    /// A new CA; the agent's server certificate is valid for `server_names`
    /// (the forward is reached as 127.0.0.1).
    pub fn generate(trust_domain: &str, server_names: &[&str]) -> FleetPki {
        let ca = Ca::generate("test fleet CA").expect("fleet CA");
        let server = ca
            .issue(&format!("spiffe://{trust_domain}/dpu-agent"), server_names)
            .expect("server identity");
        let controller = ca
            .issue(&Role::FleetController.spiffe_id(trust_domain), &[])
            .expect("fleet controller identity");
        FleetPki {
            trust_domain: trust_domain.to_string(),
            ca,
            server,
            controller,
        }
    }

    /// Writes the provisioning file for `hostname` with `images/provision.sh`
    /// (`DIR/provision.tar`), and the BlueField `DIR/bf.cfg` carrying it.
    pub fn provisioning_file(&self, hostname: &str, dir: &Path) -> PathBuf {
        self.provisioning_file_with(hostname, dir, None, None)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`FleetPki::provisioning_file`] with `provision.sh --profile` and
    /// `--config` when given; `Err` holds provision.sh's stderr when it
    /// refused.
    pub fn provisioning_file_with(
        &self,
        hostname: &str,
        dir: &Path,
        profile: Option<&str>,
        config: Option<&Path>,
    ) -> Result<PathBuf, String> {
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write PEM");
            path
        };
        let cert = write("server.pem", &self.server.cert_pem);
        let key = write("server-key.pem", &self.server.key_pem);
        let bundle = write("ca.pem", &self.ca.cert_pem);
        let out = dir.join("provision.tar");
        let mut cmd = Command::new("bash");
        cmd.arg(workspace_root().join("images/provision.sh"));
        if let Some(p) = profile {
            cmd.args(["--profile", p]);
        }
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let run = cmd
            .args(["--hostname", hostname, "--trust-domain", &self.trust_domain])
            .arg("--server-cert")
            .arg(&cert)
            .arg("--server-key")
            .arg(&key)
            .arg("--trust-bundle")
            .arg(&bundle)
            .arg("--out")
            .arg(&out)
            .arg("--bf-cfg")
            .arg(dir.join("bf.cfg"))
            .stderr(Stdio::piped())
            .output()
            .expect("run images/provision.sh");
        if run.status.success() {
            Ok(out)
        } else {
            Err(format!(
                "images/provision.sh failed ({}): {}",
                run.status,
                String::from_utf8_lossy(&run.stderr)
            ))
        }
    }

    /// The fleet controller's client of the agent at `url`.
    pub fn controller_client(&self, url: &str) -> Client {
        Client::from_pem(
            url,
            self.ca.cert_pem.as_bytes(),
            Some((
                self.controller.cert_pem.as_bytes(),
                self.controller.key_pem.as_bytes(),
            )),
        )
        .expect("fleet controller client")
    }
}

/// A booted image. Dropping it kills QEMU.
#[derive(Debug)]
pub struct ImageVm {
    child: Option<Child>,
    console: PathBuf,
    port: u16,
    started: Instant,
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct ImageBoot {
    /// The image directory (`Image`, `initrd.img`).
    pub image_dir: PathBuf,
    /// The root disk, written by the guest (a copy of `disk.img`).
    pub disk: PathBuf,
    /// The provisioning file, attached read-only as the `dpu-provision` disk.
    pub provisioning: Option<PathBuf>,
    /// A tar holding `hook.sh` ([`test_hook_disk`]), attached read-only as
    /// the `dpu-test-hook` disk, with `dpu.test_hook` on the kernel command
    /// line.
    pub test_hook: Option<PathBuf>,
    /// Host port forwarded to the agent's 9443.
    pub port: u16,
    /// Where the serial console is written.
    pub console: PathBuf,
}

impl ImageVm {
    pub fn boot(spec: &ImageBoot) -> ImageVm {
        let mut append = String::from("console=ttyAMA0 panic=-1 quiet dpu.console_log=1");
        if spec.test_hook.is_some() {
            append.push_str(" dpu.test_hook");
        }
        let mut cmd = Command::new("qemu-system-aarch64");
        cmd.args(["-M", "virt", "-cpu", "cortex-a72", "-accel", "tcg"])
            .args(["-smp", "2", "-m", "1024", "-nodefaults", "-no-user-config"])
            .args(["-display", "none", "-no-reboot", "-serial"])
            .arg(format!("file:{}", spec.console.display()))
            .arg("-kernel")
            .arg(spec.image_dir.join("Image"))
            .arg("-initrd")
            .arg(spec.image_dir.join("initrd.img"))
            .arg("-append")
            .arg(&append)
            .arg("-drive")
            .arg(format!(
                "file={},if=none,format=raw,id=root,cache=writeback",
                spec.disk.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=root"]);
        if let Some(p) = &spec.provisioning {
            cmd.arg("-drive")
                .arg(format!(
                    "file={},if=none,format=raw,id=prov,readonly=on",
                    p.display()
                ))
                .args(["-device", "virtio-blk-pci,drive=prov,serial=dpu-provision"]);
        }
        if let Some(h) = &spec.test_hook {
            cmd.arg("-drive")
                .arg(format!(
                    "file={},if=none,format=raw,id=hook,readonly=on",
                    h.display()
                ))
                .args(["-device", "virtio-blk-pci,drive=hook,serial=dpu-test-hook"]);
        }
        cmd.args([
            "-netdev",
            &format!(
                "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{}-:9443",
                spec.port
            ),
            "-device",
            "virtio-net-pci,netdev=n0,romfile=",
            "-device",
            "virtio-rng-pci",
        ]);
        let log = std::fs::File::create(spec.console.with_extension("qemu.log")).expect("qemu log");
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and affects only the child: the
        // kernel kills QEMU if this test process dies without unwinding.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let child = cmd
            .spawn()
            .expect("start qemu-system-aarch64 (run images/setup.sh)");
        ImageVm {
            child: Some(child),
            console: spec.console.clone(),
            port: spec.port,
            started,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Time since QEMU was started.
    pub fn since_start(&self) -> Duration {
        self.started.elapsed()
    }

    /// The serial console so far (kernel, init, agent logs).
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// The last `n` console lines, for failure messages.
    pub fn console_tail(&self, n: usize) -> String {
        let text = self.console();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until `/readyz` answers 200 (the forward accepts before the
    /// guest listens, so every probe has a short timeout); returns the time
    /// since QEMU started and the body.
    pub async fn wait_ready(&mut self, client: &Client, within: Duration) -> (Duration, String) {
        let deadline = self.started + within;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "QEMU exited ({status}) before the agent was ready; console:\n{}",
                    self.console_tail(60)
                );
            }
            let last = match tokio::time::timeout(Duration::from_secs(3), client.readyz()).await {
                Ok(Ok((200, body))) => return (self.started.elapsed(), body),
                Ok(Ok((status, body))) => format!("{status} {body}"),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "/readyz not 200 within {within:?} (last: {last}); console:\n{}",
                self.console_tail(60)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until the console has a line containing `needle` and returns
    /// that line (panics with the console's tail after `within`).
    pub async fn wait_console_line(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self.console().lines().find(|l| l.contains(needle)) {
                return line.trim_end().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no console line with {needle:?} within {within:?}; console:\n{}",
                self.console_tail(60)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Power cut: QEMU killed, the disk keeps what the guest wrote (QEMU
    /// writes through to the file; nothing the guest flushed is lost).
    pub fn power_off(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ImageVm {
    fn drop(&mut self) {
        self.power_off();
    }
}

/// Copies `disk.img` keeping it sparse (1 GiB apparent, ~200 MB used).
pub fn copy_disk(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp {} {} failed",
        from.display(),
        to.display()
    );
}

/// Writes `script` as `hook.sh` into the tar `DIR/test-hook.tar`, the disk
/// an [`ImageBoot::test_hook`] attaches (tar pads to whole 512-byte blocks,
/// as a raw disk needs).
pub fn test_hook_disk(dir: &Path, script: &str) -> PathBuf {
    let stage = dir.join("test-hook");
    std::fs::create_dir_all(&stage).expect("test hook dir");
    std::fs::write(stage.join("hook.sh"), script).expect("write hook.sh");
    let out = dir.join("test-hook.tar");
    let status = Command::new("tar")
        .args(["--format=ustar", "--owner=0", "--group=0", "-cf"])
        .arg(&out)
        .arg("-C")
        .arg(&stage)
        .arg("hook.sh")
        .status()
        .expect("run tar");
    assert!(status.success(), "tar of the test hook failed: {status}");
    out
}

/// What the image's `provision apply` did, run on this host in a private
/// mount namespace ([`provision_apply`]).
#[derive(Debug)]
pub struct ProvisionApply {
    pub success: bool,
    /// Its stdout and stderr (the lines the image sends to the console).
    pub output: String,
    /// The namespace's `/etc` changes (the overlay's upper directory): what
    /// it wrote, and nothing else.
    pub etc: PathBuf,
}

/// Runs the image's `/usr/lib/dpu-image/provision apply` (from the source
/// tree) against `tar`, as the image would find it at
/// `/etc/dpu-agent/provision.tar` (where `bf.cfg` puts it), with the agent
/// configs the image ships in `/etc/dpu-agent` (`config.toml` and
/// `config.generic.toml`: the generic profile; `config.bluefield.toml`:
/// `dpu-agent/config.bluefield.toml`, as `images/build.sh` copies them).
/// `/etc` is an overlay in a private mount namespace (`unshare -m`, root),
/// so the host's `/etc` is not touched; the upper directory, `DIR/up`, is
/// what the script wrote.
pub fn provision_apply(tar: &Path, dir: &Path) -> ProvisionApply {
    let root = workspace_root();
    let up = dir.join("up");
    let work = dir.join("work");
    std::fs::create_dir_all(&up).expect("overlay upper dir");
    std::fs::create_dir_all(&work).expect("overlay work dir");
    let script = r#"set -e
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc
mkdir -p /etc/dpu-agent
cp "$3/images/rootfs/etc/dpu-agent/config.toml" /etc/dpu-agent/config.toml
cp "$3/images/rootfs/etc/dpu-agent/config.toml" /etc/dpu-agent/config.generic.toml
cp "$3/dpu-agent/config.bluefield.toml" /etc/dpu-agent/config.bluefield.toml
cp "$4" /etc/dpu-agent/provision.tar
set +e
sh "$3/images/rootfs/usr/lib/dpu-image/provision" apply
"#;
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", script, "sh"])
        .arg(&up)
        .arg(&work)
        .arg(&root)
        .arg(tar)
        .output()
        .expect("run unshare");
    ProvisionApply {
        success: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        etc: up,
    }
}
