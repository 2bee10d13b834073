//! A blocking NETLINK_XFRM socket, optionally opened inside another network
//! namespace (the socket stays bound to the namespace it was created in).
//! Callers in async code run it on a blocking thread. The socket, the
//! request / ack / dump exchange and its sequence matching are
//! `dpu-netlink`'s; the receive buffer is wiped after each datagram (SA
//! dumps carry key material).

use std::path::Path;

use dpu_netlink::Socket;

use super::wire::{self, Message, Reply, Request, WireError};

#[derive(Debug, thiserror::Error)]
pub enum XfrmError {
    /// The shared netlink layer failed (open, namespace, I/O, timeout) or
    /// the kernel refused request `op`.
    #[error("{op} failed")]
    Netlink {
        op: &'static str,
        #[source]
        source: dpu_netlink::Error,
    },
    #[error("cannot decode the kernel's reply")]
    Decode(#[from] WireError),
}

impl XfrmError {
    /// The errno of a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            XfrmError::Netlink { source, .. } => source.errno(),
            XfrmError::Decode(_) => None,
        }
    }

    /// The kernel refused `op` with `errno` (positive), as a refusal from
    /// the kernel would read; for backends that stand in for it.
    pub fn kernel(op: &'static str, errno: i32) -> XfrmError {
        XfrmError::of(op, dpu_netlink::Error::kernel(errno))
    }

    /// The shared layer's error, for request `op`.
    fn of(op: &'static str, source: dpu_netlink::Error) -> XfrmError {
        XfrmError::Netlink { op, source }
    }
}

/// What ends an exchange early: the shared layer's error or our decoding's.
enum Fail {
    Netlink(dpu_netlink::Error),
    Wire(WireError),
}

impl From<dpu_netlink::Error> for Fail {
    fn from(e: dpu_netlink::Error) -> Fail {
        Fail::Netlink(e)
    }
}

#[derive(Debug)]
pub struct XfrmSocket {
    sock: Socket,
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
    fn wrap(sock: Result<Socket, dpu_netlink::Error>) -> Result<XfrmSocket, XfrmError> {
        let sock = sock.map_err(|e| XfrmError::of("opening the socket", e))?;
        Ok(XfrmSocket {
            sock: sock.wipe_received(true),
        })
    }

    /// A socket in the caller's network namespace.
    pub fn open() -> Result<XfrmSocket, XfrmError> {
        Self::wrap(Socket::open(wire::NETLINK_XFRM))
    }

    /// A socket in the network namespace at `netns` (e.g.
    /// `/run/netns/NAME`), or in the caller's when `None`. The namespace is
    /// entered on a short-lived thread, so the caller's thread is untouched.
    pub fn open_in(netns: Option<&Path>) -> Result<XfrmSocket, XfrmError> {
        Self::wrap(Socket::open_in(wire::NETLINK_XFRM, netns))
    }

    /// A socket in a new, empty network namespace that only this socket
    /// holds: XFRM state programmed through it lives and dies with the
    /// socket, away from the host's (the agent's dev mode). Needs
    /// CAP_SYS_ADMIN.
    pub fn open_in_private_netns() -> Result<XfrmSocket, XfrmError> {
        Self::wrap(Socket::open_in_private_netns(wire::NETLINK_XFRM))
    }

    /// Sends `req` and decodes every message answering it until the ack or
    /// `NLMSG_DONE`; the kernel's error is `Kernel`.
    fn exchange(&mut self, req: &Request) -> Result<Vec<Message>, XfrmError> {
        // Holds key bytes for a new SA: zeroized when dropped.
        let mut msg = req.encode(0);
        let mut out = Vec::new();
        self.sock
            .exchange(&mut msg[..], |h, body| {
                out.push(wire::decode_message(h, body).map_err(Fail::Wire)?);
                Ok::<(), Fail>(())
            })
            .map_err(|f| match f {
                Fail::Netlink(e) => XfrmError::of(op_name(req), e),
                Fail::Wire(e) => XfrmError::Decode(e),
            })?;
        Ok(out)
    }

    /// Sends a change and waits for the kernel's ack (timed in
    /// [`crate::timing`] as backend `xfrm`).
    pub fn request(&mut self, req: &Request) -> Result<(), XfrmError> {
        crate::timing::time("xfrm", op_label(req), || self.request_untimed(req))
    }

    fn request_untimed(&mut self, req: &Request) -> Result<(), XfrmError> {
        debug_assert!(!req.is_dump());
        self.exchange(req).map(drop)
    }

    /// Runs a dump and collects every message until `NLMSG_DONE` (timed
    /// as backend `xfrm`).
    pub fn dump(&mut self, req: &Request) -> Result<Vec<Message>, XfrmError> {
        crate::timing::time("xfrm", op_label(req), || self.dump_untimed(req))
    }

    fn dump_untimed(&mut self, req: &Request) -> Result<Vec<Message>, XfrmError> {
        debug_assert!(req.is_dump());
        self.exchange(req)
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
