//! A blocking NETLINK_XFRM socket, optionally opened inside another network
//! namespace (the socket stays bound to the namespace it was created in).
//! Callers in async code run it on a blocking thread.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use zeroize::Zeroize;

use super::wire::{self, Message, Reply, Request, WireError};

#[derive(Debug, thiserror::Error)]
pub enum XfrmError {
    #[error("cannot open the NETLINK_XFRM socket")]
    Open(#[source] io::Error),
    #[error("cannot enter network namespace {path}")]
    Netns {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("netlink I/O failed")]
    Io(#[source] io::Error),
    #[error("the kernel refused {op}")]
    Kernel {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot decode the kernel's reply")]
    Decode(#[from] WireError),
}

impl XfrmError {
    /// The errno of a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            XfrmError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct XfrmSocket {
    fd: OwnedFd,
    seq: u32,
}

/// The netlink message of `req`, as a metrics label.
fn op_label(req: &Request) -> &'static str {
    match req {
        Request::NewSa(_) => "newsa",
        Request::DelSa(_) => "delsa",
        Request::DumpSa => "dump_sa",
        Request::UpdPolicy(_) => "updpolicy",
        Request::DelPolicy(_) => "delpolicy",
        Request::DumpPolicy => "dump_policy",
    }
}

fn op_name(r: &Request) -> &'static str {
    match r {
        Request::NewSa(_) => "adding an SA",
        Request::DelSa(_) => "deleting an SA",
        Request::DumpSa => "listing SAs",
        Request::UpdPolicy(_) => "installing a policy",
        Request::DelPolicy(_) => "deleting a policy",
        Request::DumpPolicy => "listing policies",
    }
}

impl XfrmSocket {
    /// A socket in the caller's network namespace.
    pub fn open() -> Result<XfrmSocket, XfrmError> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                wire::NETLINK_XFRM,
            )
        };
        if fd < 0 {
            return Err(XfrmError::Open(io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain old data; zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: addr is a valid sockaddr_nl of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(XfrmError::Open(io::Error::last_os_error()));
        }
        let rcvbuf: libc::c_int = 1 << 20;
        // SAFETY: setsockopt with a valid int option; failure is harmless.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &rcvbuf as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        Ok(XfrmSocket { fd, seq: 1 })
    }

    /// A socket in the network namespace at `netns` (e.g.
    /// `/run/netns/NAME`), or in the caller's when `None`. The namespace is
    /// entered on a short-lived thread, so the caller's thread is untouched.
    pub fn open_in(netns: Option<&Path>) -> Result<XfrmSocket, XfrmError> {
        let Some(path) = netns else {
            return XfrmSocket::open();
        };
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).map_err(|source| XfrmError::Netns {
                path: path.display().to_string(),
                source,
            })?;
            // SAFETY: setns on a namespace fd we hold; affects only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                return Err(XfrmError::Netns {
                    path: path.display().to_string(),
                    source: io::Error::last_os_error(),
                });
            }
            XfrmSocket::open()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(XfrmError::Open(io::Error::other(
                "namespace thread panicked",
            )))
        })
    }

    /// A socket in a new, empty network namespace that only this socket
    /// holds: XFRM state programmed through it lives and dies with the
    /// socket, away from the host's (the agent's dev mode). Needs
    /// CAP_SYS_ADMIN.
    pub fn open_in_private_netns() -> Result<XfrmSocket, XfrmError> {
        std::thread::spawn(|| {
            // SAFETY: unshare affects only this short-lived thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
                return Err(XfrmError::Netns {
                    path: "(new private namespace)".into(),
                    source: io::Error::last_os_error(),
                });
            }
            XfrmSocket::open()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(XfrmError::Open(io::Error::other(
                "namespace thread panicked",
            )))
        })
    }

    fn send(&mut self, req: &Request) -> Result<u32, XfrmError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let msg = req.encode(seq);
        // SAFETY: sockaddr_nl is plain old data; zero is the kernel's address.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: msg and to are valid for the lengths given.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
                &to as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(XfrmError::Io(io::Error::last_os_error()));
        }
        Ok(seq)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XfrmError> {
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(XfrmError::Io(e));
            }
            return Ok(n as usize);
        }
    }

    /// Sends a change and waits for the kernel's ack (timed in
    /// [`crate::timing`] as backend `xfrm`).
    pub fn request(&mut self, req: &Request) -> Result<(), XfrmError> {
        crate::timing::time("xfrm", op_label(req), || self.request_untimed(req))
    }

    fn request_untimed(&mut self, req: &Request) -> Result<(), XfrmError> {
        debug_assert!(!req.is_dump());
        let seq = self.send(req)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.recv(&mut buf)?;
            let msgs = wire::decode(&buf[..n]);
            buf[..n].zeroize();
            for m in msgs? {
                if m.seq != seq {
                    continue;
                }
                if let Reply::Error(e) = m.reply {
                    if e == 0 {
                        return Ok(());
                    }
                    return Err(XfrmError::Kernel {
                        op: op_name(req),
                        source: io::Error::from_raw_os_error(-e),
                    });
                }
            }
        }
    }

    /// Runs a dump and collects every message until `NLMSG_DONE` (timed
    /// as backend `xfrm`).
    pub fn dump(&mut self, req: &Request) -> Result<Vec<Message>, XfrmError> {
        crate::timing::time("xfrm", op_label(req), || self.dump_untimed(req))
    }

    fn dump_untimed(&mut self, req: &Request) -> Result<Vec<Message>, XfrmError> {
        debug_assert!(req.is_dump());
        let seq = self.send(req)?;
        // Dumps of SAs carry key material: wipe the buffer after each read.
        let mut buf = vec![0u8; 256 * 1024];
        let mut out = Vec::new();
        loop {
            let n = self.recv(&mut buf)?;
            let msgs = wire::decode(&buf[..n]);
            buf[..n].zeroize();
            for m in msgs? {
                if m.seq != seq {
                    continue;
                }
                match m.reply {
                    Reply::Done => return Ok(out),
                    Reply::Error(e) if e != 0 => {
                        return Err(XfrmError::Kernel {
                            op: op_name(req),
                            source: io::Error::from_raw_os_error(-e),
                        });
                    }
                    _ => out.push(m),
                }
            }
        }
    }

    pub fn sas(&mut self) -> Result<Vec<wire::Sa>, XfrmError> {
        Ok(self
            .dump(&Request::DumpSa)?
            .into_iter()
            .filter_map(|m| match m.reply {
                Reply::Sa(sa) => Some(*sa),
                _ => None,
            })
            .collect())
    }

    pub fn policies(&mut self) -> Result<Vec<wire::Policy>, XfrmError> {
        Ok(self
            .dump(&Request::DumpPolicy)?
            .into_iter()
            .filter_map(|m| match m.reply {
                Reply::Policy(p) => Some(*p),
                _ => None,
            })
            .collect())
    }
}
