//! systemd's notify protocol (`sd_notify(3)`), written here: one datagram
//! per message to the `AF_UNIX` socket named by `$NOTIFY_SOCKET` (a path, or
//! `@name` for the abstract namespace), each message `KEY=value` lines.
//!
//! The agent sends `READY=1` once the store is open and the API listener is
//! bound (from then on `/readyz` answers; it says 503 until the first
//! reconcile pass is done and every backend is connected), `WATCHDOG=1`
//! every half of `$WATCHDOG_USEC` while it runs, and `STOPPING=1` when the
//! shutdown signal arrives. The pings come from a task on the agent's async
//! runtime: a stopped (`SIGSTOP`) or wedged process stops pinging, and
//! systemd's `WatchdogSec=` kills and restarts it.
//!
//! Without `$NOTIFY_SOCKET` (a shell, `dpu-agent dev`, busybox init) every
//! call is a no-op; without `$WATCHDOG_USEC`, or when `$WATCHDOG_PID` names
//! another process, there are no pings. Send errors are logged, never fatal:
//! a lost notification is systemd's timeout to handle, not a reason to stop
//! serving.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tokio::sync::watch;

/// Where and how often to notify, read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifier {
    socket: NotifySocket,
    /// How often to send `WATCHDOG=1` (half of `$WATCHDOG_USEC`), when the
    /// watchdog is enabled for this process.
    watchdog: Option<Duration>,
}

/// The address in `$NOTIFY_SOCKET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifySocket {
    /// A file-system path (`/run/systemd/notify`).
    Path(std::path::PathBuf),
    /// An abstract-namespace name (`@name` in the variable, without the `@`).
    Abstract(Vec<u8>),
}

/// Why a variable was ignored (logged; the agent runs on without it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("NOTIFY_SOCKET {0:?} is neither an absolute path nor an abstract name (@name)")]
    Socket(String),
    #[error("WATCHDOG_USEC {0:?} is not a positive number of microseconds")]
    WatchdogUsec(String),
    #[error("WATCHDOG_PID {0:?} is not a process id")]
    WatchdogPid(String),
}

impl NotifySocket {
    /// Parses `$NOTIFY_SOCKET`.
    pub fn parse(value: &str) -> Result<NotifySocket, EnvError> {
        if let Some(name) = value.strip_prefix('@')
            && !name.is_empty()
        {
            return Ok(NotifySocket::Abstract(name.as_bytes().to_vec()));
        }
        if value.starts_with('/') && value.len() > 1 {
            return Ok(NotifySocket::Path(value.into()));
        }
        Err(EnvError::Socket(value.to_string()))
    }

    fn address(&self) -> io::Result<SocketAddr> {
        match self {
            NotifySocket::Path(p) => SocketAddr::from_pathname(p),
            NotifySocket::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt as _;
                SocketAddr::from_abstract_name(name)
            }
        }
    }
}

/// The ping interval from `$WATCHDOG_USEC` and `$WATCHDOG_PID`: half the
/// timeout, or `None` when the watchdog is meant for another process.
pub fn watchdog_interval(
    usec: Option<&str>,
    pid: Option<&str>,
    my_pid: u32,
) -> Result<Option<Duration>, EnvError> {
    let Some(usec) = usec else { return Ok(None) };
    if let Some(pid) = pid {
        let pid: u32 = pid
            .trim()
            .parse()
            .map_err(|_| EnvError::WatchdogPid(pid.to_string()))?;
        if pid != my_pid {
            return Ok(None);
        }
    }
    let us: u64 = usec
        .trim()
        .parse()
        .ok()
        .filter(|us| *us > 0)
        .ok_or_else(|| EnvError::WatchdogUsec(usec.to_string()))?;
    Ok(Some(
        Duration::from_micros(us / 2).max(Duration::from_millis(1)),
    ))
}

impl Notifier {
    /// The notifier systemd asked for through `env` (`std::env::var` in the
    /// agent), or `None` without `$NOTIFY_SOCKET`. A malformed variable is an
    /// error the caller logs; the agent runs without notifications then.
    pub fn from_env(
        env: &dyn Fn(&str) -> Option<String>,
        my_pid: u32,
    ) -> Result<Option<Notifier>, EnvError> {
        let Some(socket) = env("NOTIFY_SOCKET").filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let socket = NotifySocket::parse(&socket)?;
        let watchdog = watchdog_interval(
            env("WATCHDOG_USEC").as_deref(),
            env("WATCHDOG_PID").as_deref(),
            my_pid,
        )?;
        Ok(Some(Notifier { socket, watchdog }))
    }

    /// The watchdog ping interval, when the watchdog is on.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one message (`READY=1`, `WATCHDOG=1`, ...), one datagram,
    /// without blocking.
    pub fn notify(&self, message: &str) -> io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        let sent = sock.send_to_addr(message.as_bytes(), &self.socket.address()?)?;
        if sent != message.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short datagram to NOTIFY_SOCKET",
            ));
        }
        Ok(())
    }

    fn send(&self, message: &str) {
        if let Err(e) = self.notify(message) {
            tracing::warn!(error = %e, message, "systemd notification not sent");
        }
    }

    /// `READY=1` now, then `WATCHDOG=1` every interval until `shutdown`
    /// turns true, then `STOPPING=1`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        self.send("READY=1");
        tracing::info!(watchdog = ?self.watchdog, "told systemd the agent is ready");
        let mut ticks = self.watchdog.map(|every| {
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                changed = shutdown.changed() => if changed.is_err() { break },
                _ = async { match ticks.as_mut() {
                    Some(t) => { t.tick().await; }
                    None => std::future::pending().await,
                } } => self.send("WATCHDOG=1"),
            }
        }
        self.send("STOPPING=1");
    }
}

/// Starts the notifications for this process when systemd asked for them
/// (see the module doc); a no-op otherwise. Call once the store is open and
/// the API listener bound.
pub fn spawn(shutdown: watch::Receiver<bool>) {
    let env = |k: &str| std::env::var(k).ok();
    match Notifier::from_env(&env, std::process::id()) {
        Ok(Some(n)) => {
            tokio::spawn(n.run(shutdown));
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "not notifying systemd"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::env_of;

    #[test]
    fn socket_addresses_parse() {
        assert_eq!(
            NotifySocket::parse("/run/systemd/notify"),
            Ok(NotifySocket::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            NotifySocket::parse("@sd-notify/1"),
            Ok(NotifySocket::Abstract(b"sd-notify/1".to_vec()))
        );
        for bad in ["", "@", "/", "relative/path", "notify"] {
            assert!(
                matches!(NotifySocket::parse(bad), Err(EnvError::Socket(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_for_this_pid_only() {
        assert_eq!(
            watchdog_interval(Some("30000000"), None, 7),
            Ok(Some(Duration::from_secs(15)))
        );
        assert_eq!(
            watchdog_interval(Some("30000000"), Some("7"), 7),
            Ok(Some(Duration::from_secs(15)))
        );
        assert_eq!(watchdog_interval(Some("30000000"), Some("8"), 7), Ok(None));
        assert_eq!(watchdog_interval(None, Some("7"), 7), Ok(None));
        assert_eq!(
            watchdog_interval(Some("1"), None, 7),
            Ok(Some(Duration::from_millis(1)))
        );
        for bad in ["", "0", "-5", "30s", "1e6"] {
            assert_eq!(
                watchdog_interval(Some(bad), None, 7),
                Err(EnvError::WatchdogUsec(bad.to_string()))
            );
        }
        assert_eq!(
            watchdog_interval(Some("1000"), Some("me"), 7),
            Err(EnvError::WatchdogPid("me".to_string()))
        );
    }

    #[test]
    fn from_env_is_none_without_notify_socket() {
        assert_eq!(Notifier::from_env(&env_of(&[]), 1), Ok(None));
        assert_eq!(
            Notifier::from_env(&env_of(&[("NOTIFY_SOCKET", "")]), 1),
            Ok(None)
        );
        // The watchdog variables alone do nothing.
        assert_eq!(
            Notifier::from_env(&env_of(&[("WATCHDOG_USEC", "1000000")]), 1),
            Ok(None)
        );
        let n = Notifier::from_env(
            &env_of(&[
                ("NOTIFY_SOCKET", "@x"),
                ("WATCHDOG_USEC", "2000000"),
                ("WATCHDOG_PID", "1"),
            ]),
            1,
        )
        .unwrap()
        .unwrap();
        assert_eq!(n.watchdog(), Some(Duration::from_secs(1)));
        assert_eq!(
            Notifier::from_env(&env_of(&[("NOTIFY_SOCKET", "relative")]), 1),
            Err(EnvError::Socket("relative".into()))
        );
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("datagram within the timeout");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// A real round trip over a path socket this test binds: `READY=1`
    /// first, `WATCHDOG=1` pings at the interval while the runtime runs,
    /// `STOPPING=1` on shutdown and nothing after.
    #[tokio::test]
    async fn ready_watchdog_and_stopping_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let env = env_of(&[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "40000"),
        ]);
        let n = Notifier::from_env(&env, std::process::id())
            .unwrap()
            .unwrap();
        assert_eq!(n.watchdog(), Some(Duration::from_millis(20)));
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(n.run(rx));
        let sock = tokio::task::spawn_blocking(move || {
            assert_eq!(recv(&sock), "READY=1");
            for _ in 0..3 {
                assert_eq!(recv(&sock), "WATCHDOG=1");
            }
            sock
        })
        .await
        .unwrap();
        tx.send(true).unwrap();
        task.await.unwrap();
        let mut last = recv(&sock);
        while last == "WATCHDOG=1" {
            last = recv(&sock);
        }
        assert_eq!(last, "STOPPING=1");
        sock.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        assert!(sock.recv(&mut buf).is_err(), "a message after STOPPING=1");
    }

    /// The abstract namespace (`@name`), as systemd ≥ 254 and containers use.
    #[test]
    fn abstract_socket_round_trip() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("dpu-agent-sd-notify-test-{}", std::process::id());
        let sock =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::from_env(&env_of(&[("NOTIFY_SOCKET", &format!("@{name}"))]), 1)
            .unwrap()
            .unwrap();
        assert_eq!(n.watchdog(), None);
        n.notify("READY=1").unwrap();
        assert_eq!(recv(&sock), "READY=1");
    }

    /// Nobody listening: an error to log, not a panic or a hang.
    #[test]
    fn a_missing_socket_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier {
            socket: NotifySocket::Path(dir.path().join("absent")),
            watchdog: None,
        };
        assert!(n.notify("READY=1").is_err());
    }
}
