//! Kernel device events (kobject uevents) over a `NETLINK_KOBJECT_UEVENT`
//! socket, to rescan as soon as a function, netdev or block device comes or
//! goes instead of waiting for the periodic rescan.
//!
//! The kernel multicasts to group 1 one datagram per event:
//! `ACTION@DEVPATH\0KEY=VALUE\0...` (lib/kobject_uevent.c). udev's
//! re-broadcasts (group 2, starting `libudev`) are not joined. The parser is
//! pure and tolerant: a datagram it cannot read is dropped, never a panic.
//! Only root (or CAP_NET_ADMIN in the initial network namespace) gets the
//! events; without them the periodic rescan still works.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;

/// One kernel uevent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    pub action: String,
    pub devpath: String,
    pub vars: BTreeMap<String, String>,
}

impl Uevent {
    pub fn subsystem(&self) -> Option<&str> {
        self.vars.get("SUBSYSTEM").map(String::as_str)
    }

    /// Whether the event can change what a scan finds: also RDMA devices
    /// (`infiniband`), their verbs nodes (`infiniband_verbs`) and `rdma_cm`
    /// (`misc`). A GID entry filled in later sends no event; the periodic
    /// rescan sees it.
    pub fn is_relevant(&self) -> bool {
        matches!(
            self.subsystem(),
            Some(
                "pci"
                    | "net"
                    | "block"
                    | "nvme"
                    | "auxiliary"
                    | "virtio"
                    | "vfio"
                    | "infiniband"
                    | "infiniband_verbs"
                    | "misc"
            )
        )
    }
}

/// Parses one datagram. `None` for udev's messages and for anything that is
/// not `ACTION@DEVPATH` followed by `KEY=VALUE` fields.
pub fn parse(datagram: &[u8]) -> Option<Uevent> {
    let mut fields = datagram.split(|b| *b == 0).filter(|f| !f.is_empty());
    let header = std::str::from_utf8(fields.next()?).ok()?;
    let (action, devpath) = header.split_once('@')?;
    if action.is_empty() || !devpath.starts_with('/') {
        return None;
    }
    let mut vars = BTreeMap::new();
    for field in fields {
        let field = std::str::from_utf8(field).ok()?;
        let (k, v) = field.split_once('=')?;
        vars.insert(k.to_string(), v.to_string());
    }
    Some(Uevent {
        action: action.to_string(),
        devpath: devpath.to_string(),
        vars,
    })
}

/// A bound, non-blocking uevent socket.
#[derive(Debug)]
pub struct UeventSocket {
    fd: AsyncFd<OwnedFd>,
}

impl UeventSocket {
    /// Opens and binds the socket to the kernel's multicast group 1. Must be
    /// called inside a tokio runtime.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw: RawFd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_KOBJECT_UEVENT,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_pid = 0; // let the kernel pick a port id
        addr.nl_groups = 1;
        // SAFETY: `addr` is a valid sockaddr_nl and the length is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is an open descriptor the AsyncFd takes ownership of;
        // OwnedFd always returns that same descriptor until it is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(UeventSocket { fd })
    }

    /// The next event that parses (skipping those that do not).
    pub async fn next(&self) -> io::Result<Uevent> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let mut guard = self.fd.readable().await?;
            let res = guard.try_io(|fd| {
                // SAFETY: `buf` is valid for `buf.len()` bytes for the call.
                let n = unsafe {
                    libc::recv(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(Ok(n)) => {
                    if let Some(ev) = parse(&buf[..n]) {
                        return Ok(ev);
                    }
                }
                // ENOBUFS: the kernel dropped events; the caller rescans anyway.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Ok(Uevent {
                        action: "overflow".into(),
                        devpath: "/".into(),
                        vars: BTreeMap::from([("SUBSYSTEM".into(), "pci".into())]),
                    });
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kernel_vf_add_event() {
        // As `udevadm monitor --kernel --property` shows a VF appearing.
        let msg = b"add@/devices/pci0000:00/0000:00:02.0/0000:03:00.2\0ACTION=add\0\
DEVPATH=/devices/pci0000:00/0000:00:02.0/0000:03:00.2\0SUBSYSTEM=pci\0\
PCI_ID=15B3:101E\0PCI_SLOT_NAME=0000:03:00.2\0SEQNUM=4711\0";
        let ev = parse(msg).unwrap();
        assert_eq!(ev.action, "add");
        assert_eq!(ev.devpath, "/devices/pci0000:00/0000:00:02.0/0000:03:00.2");
        assert_eq!(ev.subsystem(), Some("pci"));
        assert_eq!(ev.vars["PCI_SLOT_NAME"], "0000:03:00.2");
        assert!(ev.is_relevant());
    }

    #[test]
    fn udev_and_junk_are_dropped() {
        assert_eq!(parse(b"libudev\0\xfe\xed\xca\xfe"), None);
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"add@relative\0SUBSYSTEM=pci\0"), None);
        let usb = parse(b"change@/devices/x\0SUBSYSTEM=usb\0").unwrap();
        assert!(!usb.is_relevant());
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn round_trip(action in "[a-z]{1,8}", path in "/[a-z0-9:./]{0,40}",
                      vars in proptest::collection::btree_map("[A-Z_]{1,12}", "[ -~&&[^=]]{0,20}", 0..6)) {
            let mut msg = format!("{action}@{path}").into_bytes();
            for (k, v) in &vars {
                msg.push(0);
                msg.extend_from_slice(format!("{k}={v}").as_bytes());
            }
            msg.push(0);
            let ev = parse(&msg).unwrap();
            prop_assert_eq!(ev.action, action);
            prop_assert_eq!(ev.devpath, path);
            // Empty values vanish as empty fields only when the whole field
            // is empty, which KEY= never is.
            prop_assert_eq!(ev.vars, vars);
        }
    }
}
