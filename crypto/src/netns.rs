//! A thread parked in another network namespace, for making sockets there.
//!
//! A socket belongs to the network namespace of the thread that created it,
//! for its whole life, wherever it is used afterwards. [`NetnsThread`]
//! `setns(CLONE_NEWNET)`s one dedicated OS thread into a namespace once and
//! runs small jobs on it (create a socket, bind a listener, talk rtnetlink);
//! the sockets it makes are then handed to tokio like any other. No tokio
//! worker or blocking-pool thread ever changes namespace, so no other task
//! can run in the wrong one.
//!
//! The TLS proxy uses it to bind a tenant's listener and to make every
//! upstream connection inside the tenant's namespace: loopback there is the
//! tenant's own, and the agent's API, OVSDB and SPDK sockets are not in it.
//!
//! The thread ends when the last handle is dropped. The namespace itself
//! lives as long as anything refers to it (a bind mount under `/run/netns`,
//! an open namespace fd, or a socket made here).

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, mpsc};

type Job = Box<dyn FnOnce() + Send>;

/// See the module documentation.
#[derive(Debug)]
pub struct NetnsThread {
    /// For messages: the namespace's name or path.
    name: String,
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl NetnsThread {
    /// Starts a thread inside the namespace `ns` (an open nsfs file, e.g.
    /// `/run/netns/NAME` or `/proc/PID/ns/net`). Fails if `setns` does
    /// (not a network namespace, or no CAP_SYS_ADMIN).
    pub fn spawn(name: &str, ns: File) -> io::Result<NetnsThread> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        std::thread::Builder::new()
            .name(format!(
                "netns-{}",
                name.chars().take(8).collect::<String>()
            ))
            .spawn(move || {
                // SAFETY: `ns` is an open file; setns only affects this thread,
                // which is never used for anything but this namespace's jobs.
                let entered = if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                };
                drop(ns);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if !ok {
                    return;
                }
                while let Ok(job) = rx.recv() {
                    job();
                }
            })?;
        ready_rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread ended at start")))?;
        Ok(NetnsThread {
            name: name.to_string(),
            jobs: Mutex::new(jobs),
        })
    }

    /// The namespace's name as given to [`NetnsThread::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }

    fn submit(&self, job: Job) -> io::Result<()> {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| io::Error::other(format!("the thread in netns {} ended", self.name)))
    }

    /// Runs `f` inside the namespace and waits for it (async callers).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move || {
            let _ = tx.send(f());
        }))?;
        rx.await
            .map_err(|_| io::Error::other(format!("a job in netns {} panicked", self.name)))
    }

    /// Runs `f` inside the namespace and waits for it (blocking callers;
    /// never call from inside a job).
    pub fn run_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = mpsc::channel();
        self.submit(Box::new(move || {
            let _ = tx.send(f());
        }))?;
        rx.recv()
            .map_err(|_| io::Error::other(format!("a job in netns {} panicked", self.name)))
    }

    /// A non-blocking TCP listener bound to `addr` in the namespace.
    pub async fn tcp_listener(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
        let std = self
            .run(move || {
                let l = std::net::TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Ok::<_, io::Error>(l)
            })
            .await??;
        tokio::net::TcpListener::from_std(std)
    }

    /// A connected TCP stream to `addr`, made from inside the namespace:
    /// routing, source address and reachability are the namespace's.
    pub async fn tcp_connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        let family = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let fd = self.run(move || tcp_socket(family)).await??;
        let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
        socket.connect(addr).await
    }
}

/// A fresh non-blocking, close-on-exec TCP socket in the calling thread's
/// namespace.
fn tcp_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root only: a listener bound through the thread is not reachable from
    /// the caller's namespace, and the thread cannot reach the caller's
    /// loopback listener.
    #[tokio::test]
    async fn sockets_belong_to_the_namespace_of_the_thread() {
        // A missing environment fails the test; it never passes unrun.
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "needs root for namespaces: run the tests as root (scripts/test.sh does)"
        );
        // A new, unnamed namespace, held by an fd only.
        let ns = std::thread::spawn(|| {
            // SAFETY: unshare affects only this short-lived thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            File::open("/proc/thread-self/ns/net")
        })
        .join()
        .unwrap()
        .unwrap();
        let t = NetnsThread::spawn("test", ns).unwrap();
        let theirs = t
            .tcp_listener("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let their_addr = theirs.local_addr().unwrap();
        assert!(
            tokio::net::TcpStream::connect(their_addr).await.is_err(),
            "a listener made in the namespace answers in ours"
        );
        let ours = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = ours.local_addr().unwrap();
        assert!(t.tcp_connect(addr).await.is_err());
        drop(t);
    }
}
