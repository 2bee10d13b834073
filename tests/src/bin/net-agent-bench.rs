//! `net-agent-bench`: rows 3 and 4 of net-offload's benchmarks, through the
//! real agent and a real Open vSwitch, as a markdown table. A benchmark, not
//! a test: it asserts nothing about speed.
//!
//! Setup: a private OVS sandbox whose ovs-vswitchd runs with
//! `--enable-dummy=override` (every `system` port is a dummy netdev, so ten
//! thousand representors need no kernel devices), and `dpu-agent dev
//! --no-ovs` on it with the `external` functions backend (representors named
//! `pf0vfN`, nothing programmed). One tenant, `--ports` net functions and as
//! many ports spread over networks of 100 ports each (`POST /v1/apply` in
//! batches of 1000), until every port is Ready and the switch converged
//! (`dpu_agent_switch_converged` in `/metrics`).
//!
//! - Row 3, one port added: `--runs` times, PUT a port for a function made
//!   beforehand, and time from the 201 to the watch event that shows it
//!   Ready (the switch acknowledged its flows). Baseline in the same run:
//!   `ovs-vsctl add-port` of one port on the same bridge (which waits for
//!   ovs-vswitchd to apply it) — the floor under any controller here.
//! - Row 4, agent restart: SIGKILL, start again, time until `/metrics` says
//!   converged, and the flow_mods it sent (`dpu_agent_switch_flow_mods_total`).
//!   Baseline: one `ovs-ofctl dump-flows` of the bridge (any restart that
//!   checks the switch reads it at least once).
//!
//! ```text
//! cargo build --release -p dpu-agent -p dpu-tests --bins
//! target/release/net-agent-bench [--ports 10000] [--runs 200] [--baseline-runs 20]
//! ```

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use dpu_api::Kind;
use dpu_api::client::{Client, WatchFilter};
use dpu_api::object::{ApplyRequest, ObjectWrite};
use futures_util::StreamExt;
use net_offload::sandbox::{Netns, OvsSandbox, SandboxConfig};
use serde_json::{Value, json};

type BenchResult<T> = Result<T, String>;

const BRIDGE: &str = "br-int";
const PORTS_PER_NETWORK: usize = 100;

struct Options {
    ports: usize,
    runs: usize,
    baseline_runs: usize,
    agent: PathBuf,
}

impl Options {
    fn parse() -> BenchResult<Options> {
        let mut o = Options {
            ports: 10_000,
            runs: 200,
            baseline_runs: 20,
            agent: std::env::current_exe()
                .map_err(|e| e.to_string())?
                .with_file_name("dpu-agent"),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut value = || args.next().ok_or(format!("{a} needs a value"));
            match a.as_str() {
                "--ports" => o.ports = value()?.parse().map_err(|e| format!("--ports: {e}"))?,
                "--runs" => o.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
                "--baseline-runs" => {
                    o.baseline_runs = value()?
                        .parse()
                        .map_err(|e| format!("--baseline-runs: {e}"))?
                }
                "--agent" => o.agent = PathBuf::from(value()?),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        Ok(o)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// `dpu-agent dev --no-ovs` on the sandbox; killed on drop.
struct Agent {
    bin: PathBuf,
    state: PathBuf,
    db: PathBuf,
    http: SocketAddr,
    child: Option<Child>,
}

impl Agent {
    fn spawn(&mut self) -> BenchResult<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.with_extension("log"))
            .map_err(|e| e.to_string())?;
        let child = Command::new(&self.bin)
            .args(["dev", "--no-ovs", "--state-dir"])
            .arg(&self.state)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--insecure-listen")
            .arg(self.http.to_string())
            .env("DPU_AGENT_OVS_DB", format!("unix:{}", self.db.display()))
            .env("DPU_AGENT_FUNCTIONS_BACKEND", "external")
            .env("DPU_AGENT_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn client(&self) -> BenchResult<Client> {
        Client::plain(&format!("http://{}", self.http)).map_err(|e| e.to_string())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A sample value of `/metrics`, e.g. `dpu_agent_switch_converged`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn wait_metrics(
    client: &Client,
    within: Duration,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> BenchResult<Instant> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = client.metrics().await
            && pred(&text)
        {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: not reached within {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn ready_ports(text: &str) -> f64 {
    metric(text, "dpu_agent_objects{kind=\"ports\",phase=\"Ready\"}").unwrap_or(0.0)
}

fn converged(text: &str) -> bool {
    metric(text, "dpu_agent_switch_converged") == Some(1.0)
}

fn mac(k: usize) -> String {
    format!(
        "02:00:00:{:02x}:{:02x}:{:02x}",
        (k >> 16) & 0xff,
        (k >> 8) & 0xff,
        k & 0xff
    )
}

fn function(k: usize) -> ObjectWrite {
    ObjectWrite {
        kind: "functions".into(),
        id: format!("f{k}"),
        tenant: Some("bench".into()),
        spec: json!({"type": "net", "pf": "pf0", "vf": k, "mac": mac(k)}),
    }
}

fn port(k: usize) -> (String, Value) {
    let net = k / PORTS_PER_NETWORK;
    let host = k % PORTS_PER_NETWORK + 2;
    (
        format!("p{k}"),
        json!({
            "network": format!("n{net}"),
            "function": format!("f{k}"),
            "mac": mac(k),
            "ips": [format!("10.{}.{}.{host}", net / 256, net % 256)],
        }),
    )
}

async fn apply(client: &Client, objects: Vec<ObjectWrite>) -> BenchResult<()> {
    for chunk in objects.chunks(1000) {
        client
            .apply(&ApplyRequest {
                objects: chunk.to_vec(),
                prune: None,
            })
            .await
            .map_err(|e| format!("apply: {e}"))?;
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn vsctl(ovs: &OvsSandbox, args: &[&str]) -> BenchResult<()> {
    let db = format!("--db=unix:{}", ovs.db_socket().display());
    let out = Command::new("ovs-vsctl")
        .arg(db)
        .args(args)
        .output()
        .map_err(|e| format!("ovs-vsctl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ovs-vsctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

async fn bench(o: &Options, dir: &Path, table: &mut String) -> BenchResult<()> {
    let ovs = OvsSandbox::start(SandboxConfig {
        netns: Netns::Private,
        dummy_netdevs: true,
        ..SandboxConfig::new(dir.join("ovs"))
    })
    .await
    .map_err(|e| format!("OVS sandbox: {e:?}"))?;
    let mut agent = Agent {
        bin: o.agent.clone(),
        state: dir.join("state"),
        db: ovs.db_socket(),
        http: SocketAddr::from(([127, 0, 0, 1], free_port())),
        child: None,
    };
    agent.spawn()?;
    let c = agent.client()?;
    wait_metrics(&c, Duration::from_secs(30), "agent up", |_| true).await?;

    // Setup: tenant, networks, functions (+ the runs'), then the ports.
    let t = Instant::now();
    let networks = o.ports.div_ceil(PORTS_PER_NETWORK) + o.runs.div_ceil(PORTS_PER_NETWORK);
    let mut objects = vec![ObjectWrite {
        kind: "tenants".into(),
        id: "bench".into(),
        tenant: None,
        spec: json!({}),
    }];
    for n in 0..networks {
        objects.push(ObjectWrite {
            kind: "networks".into(),
            id: format!("n{n}"),
            tenant: Some("bench".into()),
            spec: json!({"vni": 10_000 + n, "cidr": format!("10.{}.{}.0/24", n / 256, n % 256), "encap": "local"}),
        });
    }
    objects.extend((0..o.ports + o.runs).map(function));
    apply(&c, objects).await?;
    let ports: Vec<ObjectWrite> = (0..o.ports)
        .map(|k| {
            let (id, spec) = port(k);
            ObjectWrite {
                kind: "ports".into(),
                id,
                tenant: Some("bench".into()),
                spec,
            }
        })
        .collect();
    apply(&c, ports).await?;
    let want = o.ports as f64;
    wait_metrics(&c, Duration::from_secs(3600), "every port Ready", |m| {
        ready_ports(m) >= want && converged(m)
    })
    .await?;
    let m = c.metrics().await.map_err(|e| e.to_string())?;
    let flows = metric(&m, "dpu_agent_switch_flows").unwrap_or(0.0);
    eprintln!(
        "setup: {} ports, {flows} flows in {:.1} s",
        o.ports,
        t.elapsed().as_secs_f64()
    );

    // Row 3: one port added.
    let mut events = c
        .watch(
            0,
            &WatchFilter {
                kind: Some(Kind::Port),
                id: None,
                follow: true,
            },
        )
        .await
        .map_err(|e| format!("watch: {e}"))?;
    let mut lat = Vec::with_capacity(o.runs);
    for r in 0..o.runs {
        let (id, spec) = port(o.ports + r);
        let put = c
            .put(Kind::Port, &id, Some("bench"), spec, None)
            .await
            .map_err(|e| format!("PUT {id}: {e}"))?;
        let accepted = Instant::now();
        let generation = put.object.generation;
        loop {
            let e = events
                .next()
                .await
                .ok_or("watch ended")?
                .map_err(|e| e.to_string())?;
            if e.revision < put.revision || e.object.id != id {
                continue;
            }
            let s = &e.object.status;
            if s.phase == dpu_api::Phase::Ready && s.observed_generation == generation {
                break;
            }
        }
        lat.push(accepted.elapsed());
    }
    lat.sort();
    let mut base = Vec::new();
    for r in 0..o.baseline_runs {
        let name = format!("base{r}");
        let t = Instant::now();
        vsctl(&ovs, &["add-port", BRIDGE, &name])?;
        base.push(t.elapsed());
    }
    base.sort();
    let _ = writeln!(
        table,
        "| one port added on a DPU with {} ports: 201 → Ready (flows acked), {} runs | p50 {} / p99 {} | `ovs-vsctl add-port` alone, {} runs: p50 {} / p99 {} | p99 ≤ 5 ms |",
        o.ports,
        o.runs,
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        o.baseline_runs,
        ms(percentile(&base, 0.5)),
        ms(percentile(&base, 0.99)),
    );
    drop(events);

    // Row 4: agent restart.
    let m = c.metrics().await.map_err(|e| e.to_string())?;
    let flows = metric(&m, "dpu_agent_switch_flows").unwrap_or(0.0);
    agent.kill();
    let t = Instant::now();
    agent.spawn()?;
    let done = wait_metrics(
        &c,
        Duration::from_secs(600),
        "converged after restart",
        converged,
    )
    .await?;
    let took = done - t;
    let m = c.metrics().await.map_err(|e| e.to_string())?;
    let mods = metric(&m, "dpu_agent_switch_flow_mods_total").unwrap_or(f64::NAN);
    let target = format!("unix:{}", ovs.mgmt_socket(BRIDGE).display());
    let t = Instant::now();
    let dump = Command::new("ovs-ofctl")
        .args(["-O", "OpenFlow14", "dump-flows", &target])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    let dump_took = t.elapsed();
    let _ = writeln!(
        table,
        "| agent restart (SIGKILL) with {} ports / {flows} flows: start → converged, flow_mods sent | {:.2} s, {mods} flow_mods | one `ovs-ofctl dump-flows`: {:.2} s{} | ≤ 3 s, 0 |",
        o.ports + o.runs,
        took.as_secs_f64(),
        dump_took.as_secs_f64(),
        if dump.success() { "" } else { " (failed)" },
    );
    agent.kill();
    drop(ovs);
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let o = match Options::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("net-agent-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let dir = match tempfile::Builder::new()
        .prefix("netbench")
        .tempdir_in("/tmp")
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("net-agent-bench: temp dir: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut table = String::from("| row | ours | baseline | target |\n|---|---|---|---|\n");
    match bench(&o, dir.path(), &mut table).await {
        Ok(()) => {
            println!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{table}");
            eprintln!("net-agent-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
