//! `agent-bench`: throughput, latency and memory of a real `dpu-agent`, as a
//! markdown table. A benchmark, not a test: it asserts nothing and exits 0
//! whether or not the targets are met.
//!
//! It starts `dpu-agent dev --no-ovs` (the binary next to this one, so build
//! both with `--release`) in a temporary state directory, stores 10k objects
//! (100 tenants × 100 networks, `POST /v1/apply` in batches of 1000), then,
//! from this process, drives it over N concurrent keep-alive mTLS connections
//! with the admin identity: one `dpu_api::client::Client` (one connection,
//! HTTP/2 by ALPN) per worker, one request in flight per connection, closed
//! loop. Reads are `GET /v1/networks/{id}` of random networks; durable writes
//! are `PUT /v1/networks/{id}` that change `spec.mtu`, so every write is a
//! new generation the store fsyncs before answering: first closed loop (the
//! agent's saturation), then, once the agent is quiet, paced at the target
//! 2000/s with latency from each request's scheduled send (see
//! `run_phase`). RSS is the agent's
//! `VmRSS` after start, after loading and after the write phases (each
//! write adds an event to the store's log), once its CPU has gone quiet.
//!
//! The paced row's baseline, measured in the same run once the agent is
//! stopped: the same paced PUTs against the write floor (`floor.rs`), a
//! process that answers them over the agent's TLS configuration and HTTP/2
//! stack only after an `fdatasync` of their bodies, and does nothing else.
//! It is what the machine, the stack and the disk cost without the agent.
//!
//! Limits: the load generator shares the machine's cores with the agent, so
//! on a small machine the numbers are a floor, and the agent's CPU share is
//! printed beside them. Request bodies are built by this process but answers
//! are not parsed beyond the status code.
//!
//! ```text
//! cargo build --release -p dpu-agent -p dpu-tests --bins
//! target/release/agent-bench [--connections 32] [--seconds 10] [--agent PATH]
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod floor;

use dpu_api::client::{Client, Method};
use dpu_tests::agent::free_port;
use serde_json::{Value, json};

const TENANTS: usize = 100;
const NETWORKS_PER_TENANT: usize = 100;
const APPLY_BATCH: usize = 1000;

const TARGET_READS: f64 = 20_000.0;
const TARGET_WRITES: f64 = 2_000.0;
const TARGET_P99_MS: f64 = 10.0;
const TARGET_RSS_IDLE_MB: f64 = 20.0;
const TARGET_RSS_LOADED_MB: f64 = 60.0;

type BenchResult<T> = Result<T, String>;

#[derive(Debug)]
struct Options {
    connections: usize,
    seconds: u64,
    agent: PathBuf,
}

impl Options {
    fn parse() -> BenchResult<Options> {
        let mut opts = Options {
            connections: 32,
            seconds: 10,
            agent: default_agent_path()?,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            match arg.as_str() {
                "--connections" => {
                    opts.connections = value("--connections")?
                        .parse()
                        .map_err(|e| format!("--connections: {e}"))?;
                }
                "--seconds" => {
                    opts.seconds = value("--seconds")?
                        .parse()
                        .map_err(|e| format!("--seconds: {e}"))?;
                }
                "--agent" => opts.agent = PathBuf::from(value("--agent")?),
                "-h" | "--help" => {
                    return Err(
                        "usage: agent-bench [--connections N] [--seconds S] [--agent PATH]".into(),
                    );
                }
                other => return Err(format!("unknown argument {other:?} (see --help)")),
            }
        }
        if opts.connections == 0 || opts.seconds == 0 {
            return Err("--connections and --seconds must be at least 1".into());
        }
        Ok(opts)
    }
}

/// `dpu-agent` from the same target directory as this binary.
fn default_agent_path() -> BenchResult<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    Ok(exe.with_file_name("dpu-agent"))
}

/// The agent process; killed on drop, its state directory removed.
#[derive(Debug)]
struct Agent {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Agent {
    fn start(binary: &Path) -> BenchResult<Agent> {
        if !binary.is_file() {
            return Err(format!(
                "{} does not exist; run `cargo build --release -p dpu-agent -p dpu-tests --bins` \
                 or pass --agent PATH",
                binary.display()
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("agent-bench")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let log = std::fs::File::create(dir.path().join("agent.log"))
            .map_err(|e| format!("cannot create the agent log: {e}"))?;
        let log_err = log.try_clone().map_err(|e| format!("agent log: {e}"))?;
        let port = free_port();
        let child = Command::new(binary)
            .arg("dev")
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--no-ovs")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        Ok(Agent { child, dir, port })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn pki(&self, file: &str) -> PathBuf {
        self.dir.path().join("state").join("pki").join(file)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn admin(&self) -> BenchResult<Client> {
        self.target().client()
    }

    fn target(&self) -> Target {
        Target {
            port: self.port,
            pki: self.pki(""),
            pid: self.pid(),
        }
    }

    /// Stops the agent; its state directory (and PKI) stays until drop.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn wait_ready(&mut self, timeout: Duration) -> BenchResult<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "dpu-agent exited with {status} before it was ready; log:\n{}",
                    self.log()
                ));
            }
            if self.pki("admin.pem").exists()
                && let Ok((200, _)) = self.admin()?.readyz().await
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "dpu-agent not ready after {timeout:?}; log:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A server the load phases drive: the agent or the write floor, both on
/// 127.0.0.1 with the agent's certificates.
#[derive(Debug, Clone)]
struct Target {
    port: u16,
    pki: PathBuf,
    pid: u32,
}

impl Target {
    /// A client with the admin identity: one connection.
    fn client(&self) -> BenchResult<Client> {
        Client::from_files(
            &format!("https://127.0.0.1:{}", self.port),
            &self.pki.join("ca.pem"),
            Some((&self.pki.join("admin.pem"), &self.pki.join("admin-key.pem"))),
        )
        .map_err(|e| format!("admin client: {e}"))
    }
}

/// The write floor (`floor.rs`) in its own process; killed on drop.
#[derive(Debug)]
struct Floor {
    child: Child,
    target: Target,
}

impl Floor {
    /// Starts this executable as the floor, with the agent's PKI, and
    /// waits until it answers.
    async fn start(pki: &Path, dir: &Path) -> BenchResult<Floor> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
        let port = free_port();
        let child = Command::new(exe)
            .arg("--serve-floor")
            .arg(pki)
            .arg(port.to_string())
            .arg(dir)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the write floor: {e}"))?;
        let mut floor = Floor {
            target: Target {
                port,
                pki: pki.to_path_buf(),
                pid: child.id(),
            },
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = floor.child.try_wait() {
                return Err(format!("the write floor exited with {status}"));
            }
            if let Ok((200, _)) = floor.target.client()?.healthz().await {
                return Ok(floor);
            }
            if Instant::now() > deadline {
                return Err("the write floor did not answer within 10 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmRSS` of a process, in MiB.
fn rss_mib(pid: u32) -> BenchResult<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// User + system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> BenchResult<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the parenthesised command name, which may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok());
    let (Some(utime), Some(stime)) = (ticks(14), ticks(15)) else {
        return Err(format!("cannot parse /proc/{pid}/stat"));
    };
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((utime + stime) / hz)
}

/// Bytes a process has caused to be written to storage (`write_bytes` of
/// `/proc/PID/io`): the pages it wrote, not the bytes it asked for.
fn disk_write_bytes(pid: u32) -> BenchResult<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .map_err(|e| format!("/proc/{pid}/io: {e}"))?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no write_bytes in /proc/{pid}/io"))
}

/// Waits until the agent uses under 5% of a core over one second (the
/// controllers have caught up with what was just written), at most `limit`.
async fn wait_quiet(pid: u32, limit: Duration) -> BenchResult<Duration> {
    let start = Instant::now();
    loop {
        let before = cpu_seconds(pid)?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        if cpu_seconds(pid)? - before < 0.05 || start.elapsed() > limit {
            return Ok(start.elapsed());
        }
    }
}

/// Median time of a 4 KiB write + `fdatasync` in `dir`: the floor under one
/// durable commit on this disk.
fn fsync_median_ms(dir: &Path) -> BenchResult<f64> {
    use std::io::Write;
    let path = dir.join(format!("agent-bench-fsync-{}", std::process::id()));
    let mut file = std::fs::File::create(&path).map_err(|e| format!("fsync probe: {e}"))?;
    let block = [0u8; 4096];
    let mut times = Vec::with_capacity(200);
    for _ in 0..200 {
        let start = Instant::now();
        file.write_all(&block)
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("fsync probe: {e}"))?;
        times.push(start.elapsed());
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    times.sort_unstable();
    Ok(times[times.len() / 2].as_secs_f64() * 1000.0)
}

fn network_id(tenant: usize, network: usize) -> String {
    format!("t{tenant:03}-net{network:03}")
}

fn network_spec(tenant: usize, network: usize, mtu: u16) -> Value {
    json!({
        "vni": 1000 + tenant * NETWORKS_PER_TENANT + network,
        "cidr": format!("10.{tenant}.{network}.0/24"),
        "mtu": mtu,
        "encap": "vxlan",
    })
}

async fn apply(client: &Client, objects: Vec<Value>) -> BenchResult<()> {
    let body = serde_json::to_vec(&json!({ "objects": objects }))
        .map_err(|e| format!("apply body: {e}"))?;
    let resp = client
        .raw(
            Method::POST,
            "/v1/apply",
            Some(body),
            &[("content-type", "application/json")],
        )
        .await
        .map_err(|e| format!("POST /v1/apply: {e}"))?;
    if resp.status != 200 {
        return Err(format!(
            "POST /v1/apply answered {}: {}",
            resp.status,
            resp.text()
        ));
    }
    Ok(())
}

/// Stores the tenants and their networks; returns the object count.
async fn load(client: &Client) -> BenchResult<usize> {
    let tenants = (0..TENANTS)
        .map(|t| json!({"kind": "Tenant", "id": format!("t{t:03}"), "spec": {}}))
        .collect();
    apply(client, tenants).await?;
    let mut networks = Vec::with_capacity(TENANTS * NETWORKS_PER_TENANT);
    for t in 0..TENANTS {
        for n in 0..NETWORKS_PER_TENANT {
            networks.push(json!({
                "kind": "Network",
                "id": network_id(t, n),
                "tenant": format!("t{t:03}"),
                "spec": network_spec(t, n, 1450),
            }));
        }
    }
    let count = TENANTS + networks.len();
    while !networks.is_empty() {
        let rest = networks.split_off(networks.len().min(APPLY_BATCH));
        apply(client, std::mem::replace(&mut networks, rest)).await?;
    }
    Ok(count)
}

/// xorshift64*: enough randomness to pick objects, no dependency.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Load {
    Reads,
    Writes,
}

#[derive(Debug)]
struct PhaseResult {
    requests: usize,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
    /// Sorted, in microseconds.
    latencies: Vec<u32>,
    /// CPU of the server driven (the agent or the floor), in seconds.
    agent_cpu: f64,
    /// Bytes the server driven wrote to storage during the phase.
    disk_bytes: u64,
}

impl PhaseResult {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len());
        f64::from(self.latencies[i - 1]) / 1000.0
    }

    /// The agent's CPU use during the phase, in cores.
    fn agent_cores(&self) -> f64 {
        self.agent_cpu / self.elapsed.as_secs_f64()
    }
}

/// One worker per connection, for `duration`. Closed loop when `rate` is
/// `None` (each worker sends its next request when the last is answered:
/// the agent's saturation). With `Some(rate)`, paced: the workers together
/// send `rate` requests per second on a fixed schedule (worker `i` sends
/// its `k`-th at `start + (k * connections + i) / rate`, or when its
/// previous answer came if that is later), and latency runs from the
/// scheduled time, so a stall counts in full for every request it delayed
/// (no coordinated omission).
async fn run_phase(
    target: &Target,
    load: Load,
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
) -> BenchResult<PhaseResult> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let client = target.client()?;
        // Handshake outside the measured window: keep-alive from here on.
        client
            .healthz()
            .await
            .map_err(|e| format!("warm-up: {e}"))?;
        clients.push(client);
    }
    let mtu_counter = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_seconds(target.pid)?;
    let disk_before = disk_write_bytes(target.pid)?;
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + duration;
    let mut tasks = Vec::with_capacity(connections);
    for (i, client) in clients.into_iter().enumerate() {
        let mtu_counter = mtu_counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0xff51_afd7));
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut errors = 0usize;
            let mut first_error = None;
            let mut k = 0u64;
            while tokio::time::Instant::now() < deadline {
                let (t, n) = (rng.below(TENANTS), rng.below(NETWORKS_PER_TENANT));
                let path = format!("/v1/networks/{}", network_id(t, n));
                let sent = match rate {
                    None => Instant::now(),
                    Some(rate) => {
                        let slot = (k * connections as u64 + i as u64) as f64 / rate;
                        k += 1;
                        let due = start + Duration::from_secs_f64(slot);
                        if due >= start + duration {
                            break;
                        }
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                };
                let result = match load {
                    Load::Reads => client.raw(Method::GET, &path, None, &[]).await,
                    Load::Writes => {
                        // A different MTU every time: a new generation per write.
                        let step = mtu_counter.fetch_add(1, Ordering::Relaxed);
                        let mtu = 1000 + (step % 8000) as u16;
                        let body =
                            json!({"tenant": format!("t{t:03}"), "spec": network_spec(t, n, mtu)});
                        let body = serde_json::to_vec(&body).unwrap_or_default();
                        client
                            .raw(
                                Method::PUT,
                                &path,
                                Some(body),
                                &[("content-type", "application/json")],
                            )
                            .await
                    }
                };
                let took = sent.elapsed();
                match result {
                    Ok(resp) if resp.status == 200 => {
                        latencies.push(took.as_micros().min(u128::from(u32::MAX)) as u32);
                    }
                    Ok(resp) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| {
                            format!("{path}: {} {}", resp.status, resp.text())
                        });
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{path}: {e}"));
                    }
                }
            }
            (latencies, errors, first_error)
        }));
    }
    let mut result = PhaseResult {
        requests: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        agent_cpu: 0.0,
        disk_bytes: 0,
    };
    for task in tasks {
        let (latencies, errors, first_error) = task.await.map_err(|e| format!("worker: {e}"))?;
        result.latencies.extend(latencies);
        result.errors += errors;
        if result.first_error.is_none() {
            result.first_error = first_error;
        }
    }
    result.elapsed = match rate {
        // The schedule's length: a late answer does not stretch the rate.
        Some(_) => duration,
        None => start.elapsed(),
    };
    result.agent_cpu = cpu_seconds(target.pid)? - cpu_before;
    result.disk_bytes = disk_write_bytes(target.pid)?.saturating_sub(disk_before);
    result.requests = result.latencies.len();
    result.latencies.sort_unstable();
    Ok(result)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{cores} cores (nproc), {cpu}, Linux {}, load average before the run {load}",
        kernel.trim()
    )
}

fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown date".into())
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

struct Report<'a> {
    opts: &'a Options,
    machine: String,
    fsync_ms: f64,
    objects: usize,
    load_time: Duration,
    rss_idle: f64,
    rss_loaded: f64,
    rss_written: f64,
    reads: PhaseResult,
    /// Closed loop: the agent's saturation.
    writes: PhaseResult,
    /// Paced at the target rate.
    paced: PhaseResult,
    /// The same paced writes against the write floor.
    floor: PhaseResult,
    commits: CommitStats,
}

impl Report<'_> {
    fn markdown(&self) -> String {
        let mut s = String::new();
        let r = &self.reads;
        let w = &self.writes;
        let _ = writeln!(s, "Date: {}  ", today());
        let _ = writeln!(s, "Machine: {}  ", self.machine);
        let _ = writeln!(
            s,
            "Disk: state directory under {}, 4 KiB write + fdatasync median {:.2} ms  ",
            std::env::temp_dir().display(),
            self.fsync_ms
        );
        let _ = writeln!(
            s,
            "Load: {} stored objects ({TENANTS} tenants × {NETWORKS_PER_TENANT} networks) \
             stored in {:.1} s; {} keep-alive mTLS connections (HTTP/2, admin identity), \
             one request in flight each, {} s per phase; agent `dpu-agent dev --no-ovs`, \
             load generator `agent-bench` in a second process on the same cores.",
            self.objects,
            self.load_time.as_secs_f64(),
            self.opts.connections,
            self.opts.seconds,
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "| metric | target | measured | |");
        let _ = writeln!(s, "|---|---|---|---|");
        // Each row also as a `bench-row` line for `scripts/bench.sh`; only
        // the paced writes have a baseline (the write floor): nothing else
        // serves this API.
        let mut machine = String::new();
        // `met`: `None` for a row that informs and has no target; `base`:
        // the baseline and the ratio to it.
        let mut row = |name: &str,
                       target: String,
                       measured: String,
                       met: Option<bool>,
                       base: Option<(String, String)>| {
            let (shown, word) = match met {
                Some(met) => (verdict(met), if met { "met" } else { "missed" }),
                None => ("", "-"),
            };
            let _ = writeln!(s, "| {name} | {target} | {measured} | {shown} |");
            let (baseline, ratio) = base.unwrap_or(("-".into(), "-".into()));
            let _ = writeln!(
                machine,
                "bench-row\t{name}\t{measured}\t{baseline}\t{ratio}\t{target}\t{word}"
            );
        };
        row(
            "reads/s (GET random network)",
            format!("≥ {TARGET_READS:.0}"),
            format!("{:.0}", r.rate()),
            Some(r.rate() >= TARGET_READS),
            None,
        );
        row(
            "read latency p50 / p99",
            format!("p99 ≤ {TARGET_P99_MS} ms"),
            format!(
                "{:.2} / {:.2} ms",
                r.percentile_ms(0.50),
                r.percentile_ms(0.99)
            ),
            Some(r.percentile_ms(0.99) <= TARGET_P99_MS),
            None,
        );
        row(
            "durable writes/s (PUT, spec changed)",
            format!("≥ {TARGET_WRITES:.0}"),
            format!("{:.0}", w.rate()),
            Some(w.rate() >= TARGET_WRITES),
            None,
        );
        // At saturation, latency is queueing: connections / rate on
        // average (Little's law), whatever the agent does per write.
        row(
            "write latency p50 / p99 at that saturation (closed loop)",
            "-".into(),
            format!(
                "{:.2} / {:.2} ms",
                w.percentile_ms(0.50),
                w.percentile_ms(0.99)
            ),
            None,
            None,
        );
        let p = &self.paced;
        let f = &self.floor;
        // Kept up: at least 99% of the schedule's requests answered.
        let kept_up = p.rate() >= TARGET_WRITES * 0.99 && p.errors == 0;
        let floor_base = Some((
            format!("write floor p99 {:.2} ms", f.percentile_ms(0.99)),
            format!("{:.2}×", p.percentile_ms(0.99) / f.percentile_ms(0.99)),
        ));
        row(
            &format!(
                "durable writes paced at {TARGET_WRITES:.0}/s: rate, latency p50 / p99 (from the scheduled send)"
            ),
            format!("≥ {TARGET_WRITES:.0}/s with p99 ≤ {TARGET_P99_MS} ms"),
            format!(
                "{:.0}/s, {:.2} / {:.2} ms",
                p.rate(),
                p.percentile_ms(0.50),
                p.percentile_ms(0.99)
            ),
            Some(kept_up && p.percentile_ms(0.99) <= TARGET_P99_MS),
            floor_base,
        );
        // The floor's own row: what the same load costs without the agent.
        row(
            "… the write floor, same paced PUTs (mTLS, HTTP/2, JSON parsed, group fdatasync; \
             no agent): rate, latency p50 / p99",
            "-".into(),
            format!(
                "{:.0}/s, {:.2} / {:.2} ms",
                f.rate(),
                f.percentile_ms(0.50),
                f.percentile_ms(0.99)
            ),
            None,
            None,
        );
        row(
            "… CPU per paced write: the agent, the write floor",
            "-".into(),
            format!(
                "{:.0} µs, {:.0} µs",
                p.agent_cpu / p.requests.max(1) as f64 * 1e6,
                f.agent_cpu / f.requests.max(1) as f64 * 1e6
            ),
            None,
            None,
        );
        row(
            "… written to disk per paced write: the agent, the write floor",
            "-".into(),
            format!(
                "{:.1} KiB, {:.1} KiB",
                p.disk_bytes as f64 / p.requests.max(1) as f64 / 1024.0,
                f.disk_bytes as f64 / f.requests.max(1) as f64 / 1024.0
            ),
            None,
            None,
        );
        row(
            "RSS idle (after start)",
            format!("≤ {TARGET_RSS_IDLE_MB} MB"),
            format!("{:.1} MiB", self.rss_idle),
            Some(self.rss_idle <= TARGET_RSS_IDLE_MB),
            None,
        );
        row(
            "RSS with 10k objects",
            format!("≤ {TARGET_RSS_LOADED_MB} MB"),
            format!("{:.1} MiB", self.rss_loaded),
            Some(self.rss_loaded <= TARGET_RSS_LOADED_MB),
            None,
        );
        row(
            "… after the write phases (same objects, a longer event log)",
            format!("≤ {TARGET_RSS_LOADED_MB} MB"),
            format!("{:.1} MiB", self.rss_written),
            Some(self.rss_written <= TARGET_RSS_LOADED_MB),
            None,
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "Agent CPU during the phases: reads {:.2} cores, writes {:.2} cores, paced writes \
             {:.2} cores. Requests: {} reads ({} errors), {} writes ({} errors), {} paced \
             writes ({} errors).",
            r.agent_cores(),
            w.agent_cores(),
            self.paced.agent_cores(),
            r.requests,
            r.errors,
            w.requests,
            w.errors,
            self.paced.requests,
            self.paced.errors,
        );
        let c = &self.commits;
        if c.commits > 0.0 {
            let _ = writeln!(
                s,
                "Store during the write phase: {:.0} commits for {:.0} writes (PUTs and the \
                 engine's status writes), {:.1} writes per commit, {:.2} ms per commit.",
                c.commits,
                c.writes,
                c.writes / c.commits,
                c.seconds / c.commits * 1e3,
            );
        }
        for (name, phase) in [
            ("read", r),
            ("write", w),
            ("paced write", &self.paced),
            ("write floor", &self.floor),
        ] {
            if let Some(e) = &phase.first_error {
                let _ = writeln!(s, "\nFirst {name} error: {e}");
            }
        }
        let _ = write!(s, "\n{machine}");
        s
    }
}

async fn run(opts: &Options) -> BenchResult<String> {
    let machine = machine();
    eprintln!("agent-bench: starting {}", opts.agent.display());
    let fsync_ms = fsync_median_ms(&std::env::temp_dir())?;
    let mut agent = Agent::start(&opts.agent)?;
    agent.wait_ready(Duration::from_secs(30)).await?;
    wait_quiet(agent.pid(), Duration::from_secs(10)).await?;
    let rss_idle = rss_mib(agent.pid())?;

    eprintln!("agent-bench: storing {TENANTS} tenants × {NETWORKS_PER_TENANT} networks");
    let admin = agent.admin()?;
    let started = Instant::now();
    let objects = load(&admin).await?;
    let load_time = started.elapsed();
    let settled = wait_quiet(agent.pid(), Duration::from_secs(120)).await?;
    eprintln!(
        "agent-bench: stored {objects} objects in {:.1} s; controllers quiet {:.1} s later",
        load_time.as_secs_f64(),
        settled.as_secs_f64()
    );
    let rss_loaded = rss_mib(agent.pid())?;

    let duration = Duration::from_secs(opts.seconds);
    eprintln!(
        "agent-bench: reads, {} connections, {duration:?}",
        opts.connections
    );
    let reads = run_phase(
        &agent.target(),
        Load::Reads,
        opts.connections,
        duration,
        None,
    )
    .await?;
    eprintln!(
        "agent-bench: writes, {} connections, {duration:?}",
        opts.connections
    );
    let before = CommitStats::read(&admin).await?;
    let writes = run_phase(
        &agent.target(),
        Load::Writes,
        opts.connections,
        duration,
        None,
    )
    .await?;
    let commits = CommitStats::read(&admin).await?.since(&before);
    // The saturated phase leaves the controllers a backlog of status
    // writes: the paced phase starts once the agent is quiet again.
    wait_quiet(agent.pid(), Duration::from_secs(120)).await?;
    eprintln!(
        "agent-bench: writes paced at {TARGET_WRITES:.0}/s, {} connections, {duration:?}",
        opts.connections
    );
    let paced = run_phase(
        &agent.target(),
        Load::Writes,
        opts.connections,
        duration,
        Some(TARGET_WRITES),
    )
    .await?;
    wait_quiet(agent.pid(), Duration::from_secs(120)).await?;
    let rss_written = rss_mib(agent.pid())?;
    agent.stop();
    eprintln!("agent-bench: agent stopped; the same paced writes against the write floor");
    let floor = Floor::start(&agent.pki(""), agent.dir.path()).await?;
    let floor_paced = run_phase(
        &floor.target,
        Load::Writes,
        opts.connections,
        duration,
        Some(TARGET_WRITES),
    )
    .await?;
    drop(floor);

    Ok(Report {
        opts,
        machine,
        fsync_ms,
        objects,
        load_time,
        rss_idle,
        rss_loaded,
        rss_written,
        reads,
        writes,
        paced,
        floor: floor_paced,
        commits,
    }
    .markdown())
}

/// The store's commit histograms (`dpu_agent_store_commit_*` in
/// `/metrics`): sums and counts, to tell how the write phase's writes were
/// grouped.
#[derive(Debug, Default, Clone, Copy)]
struct CommitStats {
    commits: f64,
    seconds: f64,
    writes: f64,
}

impl CommitStats {
    async fn read(client: &dpu_api::client::Client) -> BenchResult<CommitStats> {
        let text = client
            .metrics()
            .await
            .map_err(|e| format!("GET /metrics: {e}"))?;
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok(CommitStats {
            commits: value("dpu_agent_store_commit_duration_seconds_count"),
            seconds: value("dpu_agent_store_commit_duration_seconds_sum"),
            writes: value("dpu_agent_store_commit_group_size_sum"),
        })
    }

    fn since(self, before: &CommitStats) -> CommitStats {
        CommitStats {
            commits: self.commits - before.commits,
            seconds: self.seconds - before.seconds,
            writes: self.writes - before.writes,
        }
    }
}

fn main() -> ExitCode {
    // The write floor's process (started by `run`, see `Floor`).
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, pki, port, dir] = args.as_slice()
        && flag == "--serve-floor"
    {
        let served = port
            .parse()
            .map_err(|e| format!("--serve-floor port: {e}"))
            .and_then(|port| floor::serve(Path::new(pki), port, Path::new(dir)));
        if let Err(e) = served {
            eprintln!("agent-bench: {e}");
        }
        return ExitCode::FAILURE;
    }
    let opts = match Options::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("agent-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agent-bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&opts)) {
        Ok(table) => {
            println!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agent-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
