//! The host stub's own `/metrics` (Prometheus text format 0.0.4), served on
//! a loopback address when `[metrics] listen` is set (off by default).
//!
//! What it counts: the DPU's functions found by the last scan (by kind and
//! PCI class), the functions exposed, device plugin registrations with the
//! kubelet, CDI specs written and removed, and whether the DPU agent is
//! reachable (lease held, time of the last answer, failed calls by
//! operation). Every label comes from a closed set chosen here; nothing the
//! agent or a tenant sends becomes a label.
//!
//! The endpoint is a deliberately tiny HTTP/1.1 responder on a tokio
//! `TcpListener` (no HTTP crate: the stub has an RSS budget): it reads one
//! request head (at most 8 KiB, within 5 s), answers `GET /metrics` with the
//! text and anything else with 404 or 405, and closes the connection. At
//! most [`MAX_CONNECTIONS`] are served at once; more are closed at accept.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::discover::Function;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 8;
const MAX_HEAD: usize = 8192;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Calls to the DPU agent, as a closed label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentOp {
    Report,
    Assignments,
    Watch,
}

impl AgentOp {
    const ALL: [AgentOp; 3] = [AgentOp::Report, AgentOp::Assignments, AgentOp::Watch];

    fn name(self) -> &'static str {
        match self {
            AgentOp::Report => "report",
            AgentOp::Assignments => "assignments",
            AgentOp::Watch => "watch",
        }
    }
}

/// What the daemon and the device plugin count; shared behind an `Arc`.
#[derive(Debug)]
pub struct StubMetrics {
    functions: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    exposed: AtomicU64,
    registrations_ok: AtomicU64,
    registrations_failed: AtomicU64,
    cdi_written: AtomicU64,
    cdi_removed: AtomicU64,
    cdi_failed: AtomicU64,
    agent_reachable: AtomicBool,
    /// `f64` bits of the Unix time of the agent's last answer; 0: never.
    agent_last_success: AtomicU64,
    agent_failures: [AtomicU64; 3],
}

impl Default for StubMetrics {
    fn default() -> Self {
        StubMetrics {
            functions: Mutex::default(),
            exposed: AtomicU64::default(),
            registrations_ok: AtomicU64::default(),
            registrations_failed: AtomicU64::default(),
            cdi_written: AtomicU64::default(),
            cdi_removed: AtomicU64::default(),
            cdi_failed: AtomicU64::default(),
            agent_reachable: AtomicBool::new(true),
            agent_last_success: AtomicU64::default(),
            agent_failures: Default::default(),
        }
    }
}

/// The PCI class of a function as a closed label: `network` (0x02),
/// `nvme` (0x010802), `storage` (other 0x01), `other`.
pub fn class_label(class: Option<u32>) -> &'static str {
    match class {
        Some(0x01_08_02) => "nvme",
        Some(c) if c >> 16 == 0x02 => "network",
        Some(c) if c >> 16 == 0x01 => "storage",
        _ => "other",
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl StubMetrics {
    /// The functions of the last successful scan.
    pub fn set_functions(&self, functions: &[Function]) {
        let mut by: BTreeMap<(&'static str, &'static str), u64> = BTreeMap::new();
        for f in functions {
            *by.entry((f.kind().as_str(), class_label(f.class)))
                .or_default() += 1;
        }
        if let Ok(mut m) = self.functions.lock() {
            *m = by;
        }
    }

    pub fn set_exposed(&self, n: usize) {
        self.exposed.store(n as u64, Ordering::Relaxed);
    }

    pub fn registration(&self, ok: bool) {
        let c = if ok {
            &self.registrations_ok
        } else {
            &self.registrations_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn cdi(&self, written: usize, removed: usize, failed: usize) {
        self.cdi_written
            .fetch_add(written as u64, Ordering::Relaxed);
        self.cdi_removed
            .fetch_add(removed as u64, Ordering::Relaxed);
        self.cdi_failed.fetch_add(failed as u64, Ordering::Relaxed);
    }

    /// The agent answered just now.
    pub fn agent_answered(&self) {
        self.agent_last_success
            .store(unix_now().to_bits(), Ordering::Relaxed);
    }

    pub fn agent_failed(&self, op: AgentOp) {
        let i = AgentOp::ALL.iter().position(|o| *o == op).unwrap_or(0);
        self.agent_failures[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the lease is held (the functions are healthy).
    pub fn set_agent_reachable(&self, reachable: bool) {
        self.agent_reachable.store(reachable, Ordering::Relaxed);
    }

    /// The text of `/metrics`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let header = |out: &mut String, name: &str, type_: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {type_}");
        };
        header(
            &mut out,
            "host_stub_functions",
            "gauge",
            "The DPU's functions the last scan found on this host, by kind (pf, vf, sf) and PCI class (network, nvme, storage, other).",
        );
        if let Ok(m) = self.functions.lock() {
            for ((kind, class), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "host_stub_functions{{kind=\"{kind}\",class=\"{class}\"}} {n}"
                );
            }
        }
        header(
            &mut out,
            "host_stub_exposed_functions",
            "gauge",
            "Assigned functions exposed to workloads (CDI spec and device plugin).",
        );
        let _ = writeln!(
            out,
            "host_stub_exposed_functions {}",
            self.exposed.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "host_stub_device_plugin_registrations_total",
            "counter",
            "Registrations of a device plugin resource with the kubelet, by outcome (ok, failed).",
        );
        for (outcome, c) in [
            ("ok", &self.registrations_ok),
            ("failed", &self.registrations_failed),
        ] {
            let _ = writeln!(
                out,
                "host_stub_device_plugin_registrations_total{{outcome=\"{outcome}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        header(
            &mut out,
            "host_stub_cdi_specs_total",
            "counter",
            "CDI spec files by action: written, removed, failed (a function that got no spec).",
        );
        for (action, c) in [
            ("written", &self.cdi_written),
            ("removed", &self.cdi_removed),
            ("failed", &self.cdi_failed),
        ] {
            let _ = writeln!(
                out,
                "host_stub_cdi_specs_total{{action=\"{action}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        header(
            &mut out,
            "host_stub_agent_reachable",
            "gauge",
            "1 while the lease holds (the DPU agent answered within lease_secs), 0 once it ran out and the functions were marked unhealthy.",
        );
        let _ = writeln!(
            out,
            "host_stub_agent_reachable {}",
            u8::from(self.agent_reachable.load(Ordering::Relaxed))
        );
        header(
            &mut out,
            "host_stub_agent_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the DPU agent's last answer (0: never since start).",
        );
        let _ = writeln!(
            out,
            "host_stub_agent_last_success_timestamp_seconds {}",
            f64::from_bits(self.agent_last_success.load(Ordering::Relaxed))
        );
        header(
            &mut out,
            "host_stub_agent_failures_total",
            "counter",
            "Failed calls to the DPU agent by operation (report, assignments, watch).",
        );
        for (op, c) in AgentOp::ALL.iter().zip(&self.agent_failures) {
            let _ = writeln!(
                out,
                "host_stub_agent_failures_total{{operation=\"{}\"}} {}",
                op.name(),
                c.load(Ordering::Relaxed)
            );
        }
        out
    }
}

/// A metrics listen address that is not loopback.
#[derive(Debug, thiserror::Error)]
#[error(
    "metrics.listen = \"{0}\": only a loopback address (127.0.0.1 or [::1]) is allowed; scrape through a node-local agent"
)]
pub struct NotLoopback(pub SocketAddr);

/// `listen` if it is a loopback address; the error names the field.
pub fn check_listen(listen: SocketAddr) -> Result<SocketAddr, NotLoopback> {
    if listen.ip().is_loopback() {
        Ok(listen)
    } else {
        Err(NotLoopback(listen))
    }
}

/// Serves `/metrics` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<StubMetrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return;
                }
            }
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    continue;
                };
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(READ_TIMEOUT, answer(stream, &metrics)).await;
                    drop(permit);
                });
            }
        }
    }
}

/// The status line and body for a request head.
pub fn respond(head: &str, metrics: &StubMetrics) -> (&'static str, String) {
    let mut parts = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => ("200 OK", metrics.render()),
        ("GET", _) => ("404 Not Found", "only /metrics is served\n".into()),
        _ => ("405 Method Not Allowed", "only GET is served\n".into()),
    }
}

async fn answer(mut stream: TcpStream, metrics: &StubMetrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            let _ = stream
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
            return Ok(());
        }
    }
    let (status, body) = respond(&String::from_utf8_lossy(&head), metrics);
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_a_closed_set() {
        assert_eq!(class_label(Some(0x020000)), "network");
        assert_eq!(class_label(Some(0x010802)), "nvme");
        assert_eq!(class_label(Some(0x010000)), "storage");
        assert_eq!(class_label(Some(0x120000)), "other");
        assert_eq!(class_label(None), "other");
    }

    #[test]
    fn only_get_metrics_is_served_and_only_on_loopback() {
        let m = StubMetrics::default();
        m.agent_failed(AgentOp::Watch);
        m.cdi(2, 1, 0);
        let (s, body) = respond("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &m);
        assert_eq!(s, "200 OK");
        assert!(body.contains("host_stub_agent_failures_total{operation=\"watch\"} 1\n"));
        assert!(body.contains("host_stub_cdi_specs_total{action=\"written\"} 2\n"));
        assert!(body.contains("host_stub_agent_reachable 1\n"));
        assert_eq!(respond("GET /x HTTP/1.1\r\n\r\n", &m).0, "404 Not Found");
        assert_eq!(
            respond("POST /metrics HTTP/1.1\r\n\r\n", &m).0,
            "405 Method Not Allowed"
        );
        assert_eq!(respond("", &m).0, "405 Method Not Allowed");
        assert!(check_listen("127.0.0.1:9464".parse().unwrap()).is_ok());
        assert!(check_listen("[::1]:9464".parse().unwrap()).is_ok());
        let err = check_listen("0.0.0.0:9464".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("metrics.listen"), "{err}");
    }
}
