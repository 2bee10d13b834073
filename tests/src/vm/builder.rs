//! The test-facing API: [`Vm::builder`] describes a guest, [`VmBuilder::run`]
//! boots it and returns a [`VmOutput`]; [`VmBuilder::start`] returns a
//! [`RunningVm`] for tests that talk to the guest through host forwards.

use std::collections::BTreeMap;
use std::fmt;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::apt::{self, PackageCache};
use super::initramfs::{self, InitConfig, Tree};
use super::kernel::Kernel;
use super::qemu::{self, Accel, QemuProcess};
use super::{VmError, cache_dir, tail};

/// Packages every guest gets: busybox for the small tools, dash as `/bin/sh`
/// (busybox's shell runs its own applets ahead of PATH, which would hide
/// Debian's tools), kmod for modprobe, and Debian's iproute2 (busybox `ip`
/// has no `xfrm` details nor `vf` settings).
const BASE_PACKAGES: [&str; 4] = ["busybox-static", "dash", "kmod", "iproute2"];

/// Time allowed for booting and shutting down around the script: a TCG
/// boot takes ~7 s on an idle 2-core host, more when tests build in parallel.
const BOOT_ALLOWANCE: Duration = Duration::from_secs(90);

/// MAC of the n-th emulated NIC (0-based).
fn nic_mac(index: usize) -> String {
    format!("52:54:00:dd:00:{:02x}", index + 1)
}

/// An emulated PCI device.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Device {
    /// QEMU's NVMe controller as an SR-IOV physical function (up to 4 VFs).
    NvmeSriov,
    /// Intel 82576 NIC with SR-IOV (7 VFs); needs QEMU >= 8.
    Igb,
    VirtioNet,
    /// A blank raw disk of this many MiB, private to the run.
    VirtioBlk {
        size_mib: u64,
    },
    /// A virtio-net NIC on one end of a [`SocketLink`], renamed `name`.
    SocketNic {
        link: SocketLink,
        side: LinkSide,
        name: String,
    },
}

/// A point-to-point Ethernet link between two guests: a QEMU socket netdev
/// (`-netdev socket,listen=127.0.0.1:PORT` in one QEMU,
/// `connect=127.0.0.1:PORT` in the other) with a virtio-net NIC on each end.
/// QEMU carries the frames over one TCP connection on the host's loopback;
/// nothing else is on the wire. The guest with the [`LinkSide::Listen`] end
/// must be started first ([`VmBuilder::start`] of the connecting guest waits
/// until the port listens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketLink {
    port: u16,
}

/// Which end of a [`SocketLink`] a guest holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkSide {
    /// Its QEMU listens on the link's port (start this guest first).
    Listen,
    /// Its QEMU connects to the link's port.
    Connect,
}

impl SocketLink {
    /// A link on a port free on 127.0.0.1 now.
    pub fn new() -> Result<SocketLink, VmError> {
        Ok(SocketLink {
            port: free_local_port()?,
        })
    }

    /// The host TCP port QEMU uses for the link.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The MAC of the NIC on `side` (locally administered, from the port, so
    /// it is distinct across the links of one test).
    pub fn mac(&self, side: LinkSide) -> String {
        let [hi, lo] = self.port.to_be_bytes();
        let end = match side {
            LinkSide::Listen => 1,
            LinkSide::Connect => 2,
        };
        format!("02:dd:{hi:02x}:{lo:02x}:00:{end:02x}")
    }
}

impl Device {
    fn is_nic(&self) -> bool {
        matches!(self, Device::Igb | Device::VirtioNet)
    }

    /// Guest driver loaded for the device (there is no udev to do it).
    fn driver(&self) -> &'static str {
        match self {
            Device::NvmeSriov => "nvme",
            Device::Igb => "igb",
            Device::VirtioNet | Device::SocketNic { .. } => "virtio_net",
            Device::VirtioBlk { .. } => "virtio_blk",
        }
    }

    fn qemu_models(&self) -> &'static [&'static str] {
        match self {
            Device::NvmeSriov => &["nvme", "nvme-subsys"],
            Device::Igb => &["igb"],
            Device::VirtioNet | Device::SocketNic { .. } => &["virtio-net-pci"],
            Device::VirtioBlk { .. } => &["virtio-blk-pci"],
        }
    }
}

/// Entry point of the rig; see [`VmBuilder`].
#[derive(Debug)]
pub struct Vm;

impl Vm {
    pub fn builder() -> VmBuilder {
        VmBuilder::default()
    }
}

/// Describes one guest. Every method adds to the description; nothing runs
/// until [`VmBuilder::run`] or [`VmBuilder::start`].
#[derive(Debug, Clone)]
pub struct VmBuilder {
    devices: Vec<Device>,
    iommu: bool,
    modules: Vec<String>,
    packages: Vec<String>,
    files: Vec<(String, FileSource, u32)>,
    forwards: Vec<u16>,
    /// Guest port on 10.0.2.100 → host port on 127.0.0.1.
    host_services: Vec<(u16, u16)>,
    kernel_args: Vec<String>,
    memory_mib: u32,
    cpus: u32,
    script: Option<String>,
    timeout: Duration,
}

#[derive(Debug, Clone)]
enum FileSource {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

impl Default for VmBuilder {
    fn default() -> Self {
        VmBuilder {
            devices: Vec::new(),
            iommu: false,
            modules: Vec::new(),
            packages: Vec::new(),
            files: Vec::new(),
            forwards: Vec::new(),
            host_services: Vec::new(),
            kernel_args: Vec::new(),
            memory_mib: 1024,
            cpus: 1,
            script: None,
            timeout: Duration::from_secs(60),
        }
    }
}

impl VmBuilder {
    /// QEMU's emulated NVMe controller as an SR-IOV PF (`sriov_max_vfs=4`);
    /// loads `nvme`. Write N to its `sriov_numvfs` for N VFs.
    pub fn nvme_sriov(mut self) -> Self {
        self.devices.push(Device::NvmeSriov);
        self
    }

    /// An `igb` (Intel 82576) SR-IOV NIC on QEMU user-mode networking with
    /// `restrict=on`; loads `igb`. Add `igbvf` to the modules for VF netdevs.
    pub fn igb(mut self) -> Self {
        self.devices.push(Device::Igb);
        self
    }

    /// A virtio-net NIC on QEMU user-mode networking with `restrict=on`;
    /// loads `virtio_net`.
    pub fn virtio_net(mut self) -> Self {
        self.devices.push(Device::VirtioNet);
        self
    }

    /// A virtio-net NIC on `side` of `link`, named `name` in the guest
    /// (renamed and set up, without an address, before the script runs;
    /// its MAC is [`SocketLink::mac`]). Loads `virtio_net`. Socket NICs
    /// never carry host forwards.
    pub fn socket_nic(mut self, link: SocketLink, side: LinkSide, name: &str) -> Self {
        self.devices.push(Device::SocketNic {
            link,
            side,
            name: name.to_string(),
        });
        self
    }

    /// A blank raw virtio-blk disk of `size_mib` MiB (`/dev/vda`, `vdb`, ...
    /// in order), private to the run; loads `virtio_blk`.
    pub fn virtio_blk(mut self, size_mib: u64) -> Self {
        self.devices.push(Device::VirtioBlk { size_mib });
        self
    }

    /// An emulated Intel IOMMU (`-device intel-iommu`, `intel_iommu=on
    /// iommu=pt`), so devices get IOMMU groups and vfio-pci can bind them.
    /// Debian's kernel has no `VFIO_NOIOMMU`, so vfio needs this.
    pub fn iommu(mut self) -> Self {
        self.iommu = true;
        self
    }

    /// Kernel modules loaded with `modprobe` (dependencies included) before
    /// the script runs, in this order after the devices' drivers.
    pub fn modules(mut self, names: &[&str]) -> Self {
        self.modules.extend(names.iter().map(|s| s.to_string()));
        self
    }

    /// Debian packages unpacked into the guest, with their shared libraries.
    pub fn packages(mut self, names: &[&str]) -> Self {
        self.packages.extend(names.iter().map(|s| s.to_string()));
        self
    }

    /// A host executable (e.g. a static musl build, see
    /// [`super::musl_binary`]) copied to `/usr/local/bin/<file name>`.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.files.push((
            format!("/usr/local/bin/{name}"),
            FileSource::Host(path),
            0o755,
        ));
        self
    }

    /// A file with these contents at `guest_path`.
    pub fn file(mut self, guest_path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.files.push((
            guest_path.to_string(),
            FileSource::Bytes(contents.into()),
            mode,
        ));
        self
    }

    /// What a guest needs to run `dpu-agent run` driven by `dpuctl` over
    /// mTLS: the static `dpu-agent` and `dpuctl` (stripped into `bins`),
    /// `config` at `/etc/dpu-agent/config.toml`, the agent's server identity
    /// and the fleet CA from `pki` in `/etc/dpu-agent/pki/`, and the fleet
    /// controller's identity for `dpuctl` in `/etc/dpuctl/`.
    pub fn fleet_agent(
        self,
        bins: &Path,
        pki: &crate::image::FleetPki,
        config: impl Into<Vec<u8>>,
    ) -> Result<Self, VmError> {
        let pem = |s: &String| s.clone().into_bytes();
        Ok(self
            .binary(super::stripped_musl_binary("dpu-agent", bins)?)
            .binary(super::stripped_musl_binary("dpuctl", bins)?)
            .file("/etc/dpu-agent/config.toml", config, 0o644)
            .file(
                "/etc/dpu-agent/pki/server.pem",
                pem(&pki.server.cert_pem),
                0o644,
            )
            .file(
                "/etc/dpu-agent/pki/server-key.pem",
                pem(&pki.server.key_pem),
                0o600,
            )
            .file("/etc/dpu-agent/pki/ca.pem", pem(&pki.ca.cert_pem), 0o644)
            .file("/etc/dpuctl/ca.pem", pem(&pki.ca.cert_pem), 0o644)
            .file("/etc/dpuctl/cert.pem", pem(&pki.controller.cert_pem), 0o644)
            .file("/etc/dpuctl/key.pem", pem(&pki.controller.key_pem), 0o600))
    }

    /// Forwards a host port on 127.0.0.1 to this guest TCP port on the first
    /// NIC (a virtio-net NIC is added if there is none). The guest side is
    /// configured as 10.0.2.15/24, its name in `$DPU_VM_NET_IF`; read the host
    /// port with [`RunningVm::host_port`].
    pub fn forward(mut self, guest_port: u16) -> Self {
        self.forwards.push(guest_port);
        self
    }

    /// Lets the guest reach a service on the host's 127.0.0.1:`host_port`
    /// at `10.0.2.100:guest_port` (QEMU `guestfwd` to a bash `/dev/tcp`
    /// relay per connection; `restrict=on` still blocks everything else). Configures the first NIC like
    /// [`Self::forward`].
    pub fn host_service(mut self, guest_port: u16, host_port: u16) -> Self {
        self.host_services.push((guest_port, host_port));
        self
    }

    /// Extra kernel command line words, e.g. `"nvme.io_timeout=5"`.
    pub fn kernel_args(mut self, args: &str) -> Self {
        self.kernel_args.push(args.to_string());
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// The test: a busybox `sh` script, run as root after setup with
    /// `$DPU_VM_OUT` (a folder whose files come back in
    /// [`VmOutput::files`]) and `/usr/sbin` + `/usr/bin` on `PATH`.
    pub fn script(mut self, script: &str) -> Self {
        self.script = Some(script.to_string());
        self
    }

    /// How long the script may run before it is killed (default 60 s). The
    /// whole VM gets this plus a boot allowance before QEMU is killed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Boots the VM, runs the script to its end and collects the results.
    pub fn run(self) -> Result<VmOutput, VmError> {
        self.start()?.wait()
    }

    /// Boots the VM and returns while the script runs.
    pub fn start(mut self) -> Result<RunningVm, VmError> {
        let started = Instant::now();
        let script = self
            .script
            .take()
            .ok_or_else(|| VmError::Invalid("no script: call .script(...)".into()))?;
        let networked = !self.forwards.is_empty() || !self.host_services.is_empty();
        if networked && !self.devices.iter().any(Device::is_nic) {
            self.devices.push(Device::VirtioNet);
        }
        if self
            .devices
            .iter()
            .filter(|d| **d == Device::NvmeSriov)
            .count()
            > 1
        {
            return Err(VmError::Invalid("at most one nvme_sriov() device".into()));
        }
        let mut models = vec!["virtio-9p-pci"];
        for d in &self.devices {
            models.extend(d.qemu_models());
        }
        if self.iommu {
            models.push("intel-iommu");
        }
        qemu::require_devices(&models)?;

        let cache_root = cache_dir();
        let cache = PackageCache::new(&cache_root)?;
        let kernel = Kernel::fetch(&cache)?;
        let mut wanted: Vec<String> = BASE_PACKAGES.iter().map(|s| s.to_string()).collect();
        wanted.extend(self.packages.iter().cloned());
        let packages = cache.resolve(&wanted)?;
        let trees = cache.trees(&packages, &|_, _| Ok(()))?;
        let busybox = packages
            .iter()
            .zip(&trees)
            .find(|(p, _)| p.name == "busybox-static")
            .map(|(_, t)| t.clone())
            .ok_or_else(|| VmError::PackageNotFound {
                name: "busybox-static".into(),
            })?;

        // In the cache's folder so staged modules can be hard links.
        let dir = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(cache.tmp_dir())
            .map_err(VmError::io("creating run folder", cache.tmp_dir()))?;
        let out_dir = dir.path().join("out");
        std::fs::create_dir(&out_dir).map_err(VmError::io("creating share", &out_dir))?;

        let mut load: Vec<String> = Vec::new();
        for d in &self.devices {
            if !load.iter().any(|m| m == d.driver()) {
                load.push(d.driver().to_string());
            }
        }
        load.extend(self.modules.iter().cloned());
        let mut staged_names = load.clone();
        staged_names.extend(
            ["virtio_pci", "9pnet_virtio", "9p", "configfs"]
                .iter()
                .map(|s| s.to_string()),
        );
        let modules = kernel.stage_modules(&staged_names, &dir.path().join("modules"))?;

        let mut tree = Tree::new();
        for t in &trees {
            tree.add_tree(t, "")?;
        }
        tree.add_symlink("/bin/sh", "dash");
        add_busybox_applets(&mut tree, &busybox)?;
        tree.add_tree(&modules, &format!("usr/lib/modules/{}", kernel.release))?;
        let forward_mac = networked.then(|| nic_mac(0));
        let links: Vec<(String, String)> = self
            .devices
            .iter()
            .filter_map(|d| match d {
                Device::SocketNic { link, side, name } => Some((link.mac(*side), name.clone())),
                _ => None,
            })
            .collect();
        let init = initramfs::init_script(&InitConfig {
            modules: &load,
            script_timeout_secs: self.timeout.as_secs().max(1),
            forward_nic_mac: forward_mac.as_deref(),
            links: &links,
        });
        tree.add_data("init", init.as_bytes(), 0o755);
        tree.add_data(initramfs::SCRIPT_PATH, script.as_bytes(), 0o755);
        for (guest, source, mode) in &self.files {
            match source {
                FileSource::Host(path) => {
                    if !path.is_file() {
                        return Err(VmError::Io {
                            what: "file for the guest",
                            path: path.clone(),
                            source: std::io::ErrorKind::NotFound.into(),
                        });
                    }
                    tree.add_file(guest, path, *mode);
                }
                FileSource::Bytes(bytes) => tree.add_data(guest, bytes, *mode),
            }
        }
        let initrd = dir.path().join("initrd.gz");
        tree.write(&initrd)?;
        // Shown by the test harness only when a test fails: where time went.
        eprintln!(
            "vm: kernel {}, initramfs {} KiB ready after {:.1?}",
            kernel.release,
            std::fs::metadata(&initrd).map_or(0, |m| m.len() / 1024),
            started.elapsed()
        );
        // The staged modules are in the initrd now.
        let _ = std::fs::remove_dir_all(dir.path().join("modules"));

        let accel = qemu::choose_accel(&cache_root.join("accel-probe"), &kernel.release, || {
            probe(&kernel, &busybox, dir.path())
        })?;

        let mut host_ports = BTreeMap::new();
        for guest in &self.forwards {
            host_ports.insert(*guest, free_local_port()?);
        }
        for d in &self.devices {
            if let Device::SocketNic {
                link,
                side: LinkSide::Connect,
                ..
            } = d
            {
                wait_listening(link.port, LINK_LISTEN_WAIT)?;
            }
        }
        let console = dir.path().join("console.log");
        let cmd = self.qemu_command(&kernel, &initrd, &console, &out_dir, accel, &host_ports)?;
        eprintln!("vm: {accel:?}: {}", apt::describe(&cmd));
        let process = QemuProcess::spawn(cmd, &dir.path().join("qemu.log"))?;
        Ok(RunningVm {
            process,
            console,
            out_dir,
            host_ports,
            deadline: Instant::now() + self.timeout + BOOT_ALLOWANCE,
            limit: self.timeout + BOOT_ALLOWANCE,
            started,
            kernel: kernel.release.clone(),
            _dir: dir,
        })
    }

    fn qemu_command(
        &self,
        kernel: &Kernel,
        initrd: &Path,
        console: &Path,
        out_dir: &Path,
        accel: Accel,
        host_ports: &BTreeMap<u16, u16>,
    ) -> Result<Command, VmError> {
        let mut append = String::from("console=ttyS0 panic=-1 quiet loglevel=4");
        if self.iommu {
            append.push_str(" intel_iommu=on iommu=pt");
        }
        for a in &self.kernel_args {
            append.push(' ');
            append.push_str(a);
        }
        let mut cmd = Command::new(qemu::QEMU);
        cmd.args(["-M", "q35"])
            .args(accel.args())
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-smp", &self.cpus.to_string()])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(&kernel.vmlinuz)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", &append]);
        // The IOMMU must exist before the devices it translates for.
        if self.iommu {
            cmd.args(["-device", "intel-iommu"]);
        }
        cmd.arg("-fsdev")
            .arg(format!(
                "local,id=dpuout,path={},security_model=none",
                out_dir.display()
            ))
            .args(["-device", "virtio-9p-pci,fsdev=dpuout,mount_tag=dpuout"]);
        let mut nics = 0;
        let mut links = 0;
        let mut disks = 0;
        for device in &self.devices {
            match device {
                Device::NvmeSriov => {
                    cmd.args(["-device", "nvme-subsys,id=subsys0", "-device",
                        "nvme,serial=dpu0,subsys=subsys0,sriov_max_vfs=4,sriov_vq_flexible=8,sriov_vi_flexible=4,max_ioqpairs=12,msix_qsize=10"]);
                }
                Device::Igb | Device::VirtioNet => {
                    let mut netdev = format!("user,id=net{nics},restrict=on");
                    if nics == 0 {
                        for (guest, host) in host_ports {
                            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
                        }
                        for (guest, host) in &self.host_services {
                            // One relay per connection (a chardev target
                            // would carry one connection only): bash's
                            // /dev/tcp to the host port, stdio to the guest.
                            netdev.push_str(&format!(
                                ",guestfwd=tcp:10.0.2.100:{guest}-cmd:bash -c 'exec 3<>/dev/tcp/127.0.0.1/{host}; cat <&3 & exec cat >&3'"
                            ));
                        }
                    }
                    let model = if *device == Device::Igb {
                        "igb"
                    } else {
                        "virtio-net-pci"
                    };
                    cmd.args(["-netdev", &netdev]).args([
                        "-device",
                        &format!("{model},netdev=net{nics},mac={}", nic_mac(nics)),
                    ]);
                    nics += 1;
                }
                Device::SocketNic { link, side, .. } => {
                    let end = match side {
                        LinkSide::Listen => "listen",
                        LinkSide::Connect => "connect",
                    };
                    cmd.args([
                        "-netdev",
                        &format!("socket,id=link{links},{end}=127.0.0.1:{}", link.port),
                        "-device",
                        &format!("virtio-net-pci,netdev=link{links},mac={}", link.mac(*side)),
                    ]);
                    links += 1;
                }
                Device::VirtioBlk { size_mib } => {
                    let image = out_dir
                        .parent()
                        .unwrap_or(out_dir)
                        .join(format!("disk{disks}.raw"));
                    let file = std::fs::File::create(&image)
                        .map_err(VmError::io("creating disk image", &image))?;
                    file.set_len(size_mib * 1024 * 1024)
                        .map_err(VmError::io("sizing disk image", &image))?;
                    cmd.arg("-drive")
                        .arg(format!(
                            "file={},if=none,format=raw,id=disk{disks},cache=unsafe",
                            image.display()
                        ))
                        .args([
                            "-device",
                            &format!("virtio-blk-pci,drive=disk{disks},serial=dpu-disk{disks}"),
                        ]);
                    disks += 1;
                }
            }
        }
        Ok(cmd)
    }
}

/// Links every busybox applet that no package provides (by name, anywhere
/// on PATH) to /bin/busybox.
fn add_busybox_applets(tree: &mut Tree, busybox_tree: &Path) -> Result<(), VmError> {
    let busybox = busybox_tree.join("bin/busybox");
    let out = apt::run(Command::new(&busybox).arg("--list-full"))?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let name = applet.rsplit('/').next().unwrap_or(applet);
        let provided = ["usr/bin", "usr/sbin", "usr/local/bin"]
            .iter()
            .any(|dir| tree.contains(&format!("{dir}/{name}")));
        if !provided && !name.is_empty() {
            tree.add_symlink(applet, "/bin/busybox");
        }
    }
    Ok(())
}

/// The KVM probe: a busybox-only initramfs that prints the marker.
fn probe(kernel: &Kernel, busybox_tree: &Path, dir: &Path) -> Result<bool, VmError> {
    let mut tree = Tree::new();
    tree.add_tree(busybox_tree, "")?;
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox echo {}\n/bin/busybox poweroff -f\n",
        qemu::probe_marker()
    );
    tree.add_data("init", init.as_bytes(), 0o755);
    let initrd = dir.join("probe-initrd.gz");
    tree.write(&initrd)?;
    qemu::probe_kvm(&kernel.vmlinuz, &initrd, dir)
}

/// How long a connecting guest waits for the listening QEMU of its link.
const LINK_LISTEN_WAIT: Duration = Duration::from_secs(20);

/// Waits until a TCP socket listens on 127.0.0.1:`port` (read from
/// `/proc/net/tcp`, so no connection is made: QEMU's listening socket
/// netdev takes the first connection as the link's).
fn wait_listening(port: u16, wait: Duration) -> Result<(), VmError> {
    let needle = format!("0100007F:{port:04X} 00000000:0000 0A");
    let deadline = Instant::now() + wait;
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        if table.lines().any(|l| l.contains(&needle)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(VmError::Invalid(format!(
                "nothing listens on the socket link 127.0.0.1:{port} after {wait:?}: start the guest with the link's Listen end first"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_local_port() -> Result<u16, VmError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(VmError::io("finding a free port", "127.0.0.1:0"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(VmError::io("finding a free port", "127.0.0.1:0"))
}

/// A booted guest. Dropping it kills QEMU and deletes the run's files.
#[derive(Debug)]
pub struct RunningVm {
    process: QemuProcess,
    console: PathBuf,
    out_dir: PathBuf,
    host_ports: BTreeMap<u16, u16>,
    deadline: Instant,
    limit: Duration,
    started: Instant,
    kernel: String,
    // Last, so QEMU (above) is killed before its files are removed.
    _dir: TempDir,
}

impl RunningVm {
    /// The 127.0.0.1 port forwarded to `guest_port` (see [`VmBuilder::forward`]).
    /// QEMU accepts connections before the guest listens: retry with short
    /// timeouts until the guest answers.
    pub fn host_port(&self, guest_port: u16) -> Option<u16> {
        self.host_ports.get(&guest_port).copied()
    }

    /// A file the guest's script wrote under `$DPU_VM_OUT` so far (the share
    /// is live), for a host side that must wait for the guest to see
    /// something before it moves on.
    pub fn out_file(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.out_dir.join("files").join(rel)).ok()
    }

    /// Raises a signal the guest's script can wait for: creates
    /// `/out/signals/<name>` in the guest (the share is live), e.g. to order
    /// steps across guests started together:
    /// `until [ -e /out/signals/go ]; do sleep 0.5; done`.
    pub fn signal(&self, name: &str) -> Result<(), VmError> {
        let dir = self.out_dir.join("signals");
        std::fs::create_dir_all(&dir).map_err(VmError::io("creating signal folder", &dir))?;
        let path = dir.join(name);
        std::fs::write(&path, b"1\n").map_err(VmError::io("raising signal", &path))
    }

    /// QEMU has not exited yet.
    pub fn is_running(&mut self) -> bool {
        matches!(self.process.wait_until(Instant::now()), Ok(None))
    }

    /// The serial console so far (kernel messages and the init's markers).
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Waits for the guest to power off and collects the results.
    pub fn wait(mut self) -> Result<VmOutput, VmError> {
        let exited = self.process.wait_until(self.deadline)?;
        let Some(qemu_status) = exited else {
            self.process.kill();
            return Err(VmError::Timeout {
                after: self.limit,
                console_tail: tail(&self.console(), 30),
            });
        };
        let console = self.console();
        eprintln!(
            "vm: QEMU exited ({qemu_status}) after {:.1?}",
            self.started.elapsed()
        );
        let read = |name: &str| std::fs::read_to_string(self.out_dir.join(name)).ok();
        let qemu_log = std::fs::read_to_string(&self.process.log).unwrap_or_default();
        if let Some(message) = read("init-error") {
            return Err(VmError::GuestSetup {
                message: message.trim().to_string(),
                console_tail: tail(&console, 20),
            });
        }
        let Some(status) = read("status").and_then(|s| s.trim().parse::<i32>().ok()) else {
            return Err(VmError::NoResult {
                qemu_status,
                console_tail: format!("{}\n{}", tail(&console, 30), tail(&qemu_log, 5)),
            });
        };
        let mut files = BTreeMap::new();
        collect_files(&self.out_dir.join("files"), Path::new(""), &mut files)?;
        Ok(VmOutput {
            status,
            timed_out: read("timed-out").is_some(),
            stdout: read("stdout").unwrap_or_default(),
            stderr: read("stderr").unwrap_or_default(),
            dmesg: read("dmesg").unwrap_or_default(),
            files,
            console,
            kernel: self.kernel.clone(),
            elapsed: self.started.elapsed(),
        })
    }
}

fn collect_files(
    dir: &Path,
    rel: &Path,
    files: &mut BTreeMap<PathBuf, Vec<u8>>,
) -> Result<(), VmError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let rel = rel.join(entry.file_name());
        if path.is_dir() {
            collect_files(&path, &rel, files)?;
        } else if path.is_file() {
            let bytes = std::fs::read(&path).map_err(VmError::io("reading guest file", &path))?;
            files.insert(rel, bytes);
        }
    }
    Ok(())
}

/// What a guest run produced.
#[derive(Debug, Clone)]
pub struct VmOutput {
    /// Exit status of the script (137 when the timeout killed it).
    pub status: i32,
    /// The script exceeded [`VmBuilder::timeout`] and was killed.
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    /// The guest kernel log at the end of the run.
    pub dmesg: String,
    /// Files the script wrote under `$DPU_VM_OUT`, by relative path.
    pub files: BTreeMap<PathBuf, Vec<u8>>,
    /// The serial console (boot messages, init markers).
    pub console: String,
    /// The guest's kernel release (`uname -r`).
    pub kernel: String,
    /// Wall time from `start` to results, including building the initramfs.
    pub elapsed: Duration,
}

impl VmOutput {
    /// The script exited 0 within its timeout.
    pub fn success(&self) -> bool {
        self.status == 0 && !self.timed_out
    }

    /// A file from `$DPU_VM_OUT` as text.
    pub fn file_text(&self, rel: &str) -> Option<String> {
        self.files
            .get(Path::new(rel))
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

/// For assertion messages: `assert!(out.success(), "{out}")`.
impl fmt::Display for VmOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "script exit status {}{} after {:.1?}",
            self.status,
            if self.timed_out { " (timed out)" } else { "" },
            self.elapsed
        )?;
        writeln!(f, "--- stdout\n{}", self.stdout)?;
        writeln!(f, "--- stderr\n{}", self.stderr)?;
        writeln!(f, "--- dmesg (last 20 lines)\n{}", tail(&self.dmesg, 20))
    }
}
