//! A blocking netlink socket of any protocol. The crate's only `unsafe`
//! code is here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::Error;
use crate::msg::{self, Exchange, Header};

/// The receive buffer: room for the largest datagram the kernel builds for
/// a dump (it sizes them to the reader's buffer, at most 32 KiB per skb
/// today, more with large messages); a datagram that does not fit is an
/// error (`MSG_TRUNC`), never silently cut.
const RECV_BUF: usize = 256 * 1024;

/// A netlink socket (`AF_NETLINK`, `SOCK_RAW`) bound to the kernel, for one
/// exchange at a time: [`Socket::exchange`] sends a request numbered with
/// the socket's next sequence number and reads answers until the request's
/// exchange is complete (see [`Exchange`]), skipping anything else.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    timeout: Option<Duration>,
    wipe: bool,
    buf: Vec<u8>,
}

impl Socket {
    /// A socket of `protocol` (e.g. [`crate::NETLINK_ROUTE`]) in the
    /// calling thread's network namespace, without a timeout.
    pub fn open(protocol: i32) -> Result<Socket, Error> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if raw < 0 {
            return Err(Error::Open(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain old data; all zeros is a valid value
        // (pid 0: the kernel picks our port id).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: `addr` is a valid sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(Error::Open(io::Error::last_os_error()));
        }
        let rcvbuf: libc::c_int = 1 << 20;
        // SAFETY: setsockopt with a valid int option; failure only leaves
        // the default buffer size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&rcvbuf as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        Ok(Socket::from_fd(fd))
    }

    /// A socket of `protocol` in the network namespace at `netns` (e.g.
    /// `/run/netns/NAME`), or in the caller's when `None`. The namespace is
    /// entered on a short-lived thread, so the caller's thread is
    /// untouched; the socket stays in the namespace it was made in.
    pub fn open_in(protocol: i32, netns: Option<&Path>) -> Result<Socket, Error> {
        let Some(path) = netns else {
            return Socket::open(protocol);
        };
        let path = path.to_path_buf();
        on_thread(move || {
            let netns_err = |source| Error::Netns {
                path: path.display().to_string(),
                source,
            };
            let ns = std::fs::File::open(&path).map_err(netns_err)?;
            // SAFETY: setns on a namespace fd we hold; affects only this
            // short-lived thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                return Err(netns_err(io::Error::last_os_error()));
            }
            Socket::open(protocol)
        })
    }

    /// A socket of `protocol` in a new, empty network namespace that only
    /// this socket holds: state programmed through it lives and dies with
    /// it. Needs CAP_SYS_ADMIN.
    pub fn open_in_private_netns(protocol: i32) -> Result<Socket, Error> {
        on_thread(move || {
            // SAFETY: unshare affects only this short-lived thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
                return Err(Error::Netns {
                    path: "(new private namespace)".into(),
                    source: io::Error::last_os_error(),
                });
            }
            Socket::open(protocol)
        })
    }

    /// Wraps a descriptor the caller opened (a netlink socket, or in tests
    /// one end of a datagram socket pair standing in for the kernel).
    pub fn from_fd(fd: OwnedFd) -> Socket {
        Socket {
            fd,
            seq: 1,
            timeout: None,
            wipe: false,
            buf: Vec::new(),
        }
    }

    /// A socket whose peer is not the kernel but the returned end of a
    /// datagram socket pair: for tests of a protocol over netlink, in which
    /// the test plays the kernel on that end (feature `test-support`).
    #[cfg(any(test, feature = "test-support"))]
    pub fn pair_with_fake_kernel() -> io::Result<(Socket, OwnedFd)> {
        let mut fds = [0; 2];
        // SAFETY: `fds` is valid for two ints.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds are fresh and owned by nobody else.
        let (ours, kernel) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Socket::from_fd(ours), kernel))
    }

    /// Bounds each exchange: an answer not complete within `timeout` of
    /// the request fails with [`Error::Timeout`]; unrelated datagrams do not
    /// extend the deadline. `None` (the default) waits as long as it takes.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Socket {
        self.timeout = timeout;
        self
    }

    /// Asks the kernel for extended acks (`NETLINK_EXT_ACK`): a refusal then
    /// carries the kernel's or driver's reason ([`Error::Refused`]). A
    /// kernel without the option leaves refusals as bare errnos.
    pub fn with_ext_ack(self) -> Socket {
        let on: libc::c_int = 1;
        // SAFETY: setsockopt(2) with a valid int option value of its size;
        // failure is harmless (no extended acks) and ignored.
        unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_NETLINK,
                libc::NETLINK_EXT_ACK,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        self
    }

    /// Overwrites the receive buffer with zeros after each datagram (for
    /// answers that carry key material, e.g. XFRM SA dumps).
    pub fn wipe_received(mut self, wipe: bool) -> Socket {
        self.wipe = wipe;
        self
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The next sequence number (never 0).
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Sends `msg` as it is to the kernel.
    pub fn send(&self, msg: &[u8]) -> Result<(), Error> {
        loop {
            // SAFETY: `msg` is valid for reads of its length; the socket is
            // bound and unconnected, so the peer is the kernel (port 0).
            let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::Io(e));
            }
            return Ok(());
        }
    }

    /// Numbers the request `msg` with the next sequence number (written
    /// into its header), sends it, and hands every data message answering
    /// it to `on_reply` (header, payload after the header) until the
    /// exchange is complete: the ack, `NLMSG_DONE`, or — for a request
    /// without `NLM_F_ACK` — a single answer. The kernel's error, a
    /// malformed answer, a timeout or an error of `on_reply` ends it.
    pub fn exchange<E: From<Error>>(
        &mut self,
        msg: &mut [u8],
        on_reply: impl FnMut(&Header, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let seq = self.next_seq();
        msg::set_seq(msg, seq);
        self.send(msg)?;
        self.receive(Exchange::for_request(msg), on_reply)
    }

    /// [`Socket::exchange`] collecting the payloads of the data messages.
    pub fn request(&mut self, msg: &mut [u8]) -> Result<Vec<Vec<u8>>, Error> {
        let mut out = Vec::new();
        self.exchange(msg, |_, p| {
            out.push(p.to_vec());
            Ok::<(), Error>(())
        })?;
        Ok(out)
    }

    /// [`Socket::exchange`] of a request that expects only its ack.
    pub fn ack(&mut self, msg: &mut [u8]) -> Result<(), Error> {
        self.exchange(msg, |_, _| Ok::<(), Error>(()))
    }

    /// The receiving half of an exchange: reads datagrams until `exchange`
    /// is complete (or the timeout passes).
    pub fn receive<E: From<Error>>(
        &mut self,
        mut exchange: Exchange,
        mut on_reply: impl FnMut(&Header, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let deadline = self.timeout.map(|t| (Instant::now() + t, t));
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(RECV_BUF, 0);
        let out = loop {
            let n = match self.recv_one(&mut buf, deadline) {
                Ok(n) => n,
                Err(e) => break Err(E::from(e)),
            };
            let fed = exchange.feed(&buf[..n], &mut on_reply);
            if self.wipe {
                wipe(&mut buf[..n]);
            }
            match fed {
                Ok(false) => {}
                Ok(true) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.buf = buf;
        out
    }

    /// One datagram into `buf`: its length. Waits until the deadline.
    fn recv_one(
        &self,
        buf: &mut [u8],
        deadline: Option<(Instant, Duration)>,
    ) -> Result<usize, Error> {
        loop {
            if let Some((at, timeout)) = deadline {
                let left = at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout(timeout));
                }
                let mut pfd = libc::pollfd {
                    fd: self.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
                // SAFETY: one valid pollfd for the duration of the call.
                let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
                if ready < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(Error::Io(e));
                }
                if ready == 0 {
                    continue;
                }
            }
            let flags = libc::MSG_TRUNC
                | if deadline.is_some() {
                    libc::MSG_DONTWAIT
                } else {
                    0
                };
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    flags,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    continue;
                }
                return Err(Error::Io(e));
            }
            let n = n as usize;
            if n > buf.len() {
                wipe(buf);
                return Err(Error::Malformed(format!(
                    "a datagram of {n} bytes does not fit the {} byte receive buffer",
                    buf.len()
                )));
            }
            return Ok(n);
        }
    }
}

/// Zeroes `b` in a way the compiler does not drop as a dead store.
fn wipe(b: &mut [u8]) {
    for x in b.iter_mut() {
        // SAFETY: `x` is a valid, aligned, exclusive reference to a u8.
        unsafe { std::ptr::write_volatile(x, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// Runs `f` on a short-lived thread (for namespace changes).
fn on_thread(f: impl FnOnce() -> Result<Socket, Error> + Send + 'static) -> Result<Socket, Error> {
    std::thread::spawn(f)
        .join()
        .unwrap_or_else(|_| Err(Error::Open(io::Error::other("namespace thread panicked"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{NLM_F_ACK, NLM_F_DUMP, NLM_F_MULTI, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR};

    fn kernel_sends(fd: &OwnedFd, b: &[u8]) {
        // SAFETY: `b` is valid for its length.
        let n = unsafe { libc::send(fd.as_raw_fd(), b.as_ptr().cast(), b.len(), 0) };
        assert_eq!(n, b.len() as isize);
    }

    fn nlmsg_error(len: usize, seq: u32, errno: i32) -> Vec<u8> {
        let mut b = msg::message(NLMSG_ERROR, 0, seq, &errno.to_ne_bytes());
        b.extend_from_slice(&msg::message(0x15, 5, seq, &[]));
        msg::finish(&mut b);
        b.truncate(len);
        b[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        b
    }

    #[test]
    fn a_request_without_answer_times_out() {
        let (ours, _kernel) = Socket::pair_with_fake_kernel().unwrap();
        let mut ours = ours.with_timeout(Some(Duration::from_millis(300)));
        let t = Instant::now();
        let e = ours
            .receive(Exchange::new(7, true), |_, _| Ok::<(), Error>(()))
            .unwrap_err();
        assert!(matches!(e, Error::Timeout(_)), "{e}");
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        // Unrelated answers (another sequence) do not extend the deadline.
        let (ours, kernel) = Socket::pair_with_fake_kernel().unwrap();
        let mut ours = ours.with_timeout(Some(Duration::from_millis(300)));
        let chatter = std::thread::spawn(move || {
            let done = msg::message(NLMSG_DONE, NLM_F_MULTI, 99, &0i32.to_ne_bytes());
            for _ in 0..20 {
                kernel_sends(&kernel, &done);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let t = Instant::now();
        let e = ours
            .receive(Exchange::new(7, true), |_, _| Ok::<(), Error>(()))
            .unwrap_err();
        assert!(matches!(e, Error::Timeout(_)), "{e}");
        assert!(
            t.elapsed() < Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        chatter.join().unwrap();
    }

    #[test]
    fn a_sixteen_byte_error_from_the_socket_fails_the_request() {
        let (mut ours, kernel) = Socket::pair_with_fake_kernel().unwrap();
        kernel_sends(&kernel, &nlmsg_error(16, 7, 0));
        let e = ours
            .receive(Exchange::new(7, true), |_, _| Ok::<(), Error>(()))
            .unwrap_err();
        assert!(matches!(e, Error::Malformed(_)), "{e}");
        kernel_sends(&kernel, &nlmsg_error(36, 7, -95));
        let e = ours
            .receive(Exchange::new(7, true), |_, _| Ok::<(), Error>(()))
            .unwrap_err();
        assert_eq!(e.errno(), Some(95));
    }

    /// A dump across datagrams, with the buffer wiped after each: the
    /// replies arrive in order, the exchange ends at NLMSG_DONE.
    #[test]
    fn a_dump_across_datagrams() {
        let (ours, kernel) = Socket::pair_with_fake_kernel().unwrap();
        let mut ours = ours.wipe_received(true);
        kernel_sends(&kernel, &msg::message(20, NLM_F_MULTI, 5, &[1, 0, 0, 0]));
        kernel_sends(&kernel, &msg::message(20, NLM_F_MULTI, 4, &[9, 0, 0, 0]));
        kernel_sends(&kernel, &msg::message(20, NLM_F_MULTI, 5, &[2, 0, 0, 0]));
        kernel_sends(&kernel, &msg::message(NLMSG_DONE, NLM_F_MULTI, 5, &[0; 4]));
        let mut got = Vec::new();
        ours.receive(Exchange::new(5, false), |h, p| {
            got.push((h.ty, p[0]));
            Ok::<(), Error>(())
        })
        .unwrap();
        assert_eq!(got, [(20, 1), (20, 2)]);
        assert!(ours.buf.iter().all(|&b| b == 0));
    }

    /// Against the kernel: a link dump on a fresh NETLINK_ROUTE socket
    /// (no privilege needed) lists `lo`, and a request the kernel refuses
    /// comes back as its errno.
    #[test]
    fn route_dump_and_refusal_from_the_kernel() {
        let mut s = Socket::open(crate::NETLINK_ROUTE)
            .unwrap()
            .with_timeout(Some(Duration::from_secs(5)));
        // RTM_GETLINK dump: struct ifinfomsg (16 bytes of zeros).
        let mut m = msg::message(18, NLM_F_REQUEST | NLM_F_DUMP, 0, &[0; 16]);
        let links = s.request(&mut m).unwrap();
        let names: Vec<String> = links
            .iter()
            .filter_map(|l| crate::attr::attrs(l.get(16..)?).get(3))
            .map(crate::attr::string)
            .collect();
        assert!(names.iter().any(|n| n == "lo"), "{names:?}");
        // RTM_GETLINK of index 0x7fff_fff0 (no such link): ENODEV.
        let mut body = [0u8; 16];
        body[4..8].copy_from_slice(&0x7fff_fff0i32.to_ne_bytes());
        let mut m = msg::message(18, NLM_F_REQUEST | NLM_F_ACK, 0, &body);
        let e = s.request(&mut m).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENODEV), "{e}");
    }
}
