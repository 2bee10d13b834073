//! Benchmarks of the OpenFlow and OVSDB clients against their ovs-ofctl /
//! ovs-vsctl baselines (issue 3, "Benchmarks", first two rows), side by side
//! in the same run, each in a private OVS sandbox (ovs-vswitchd in its own
//! network namespace, bridge br-int with datapath_type=netdev). Prints a
//! markdown table. Needs root and Open vSwitch; run with
//! `cargo bench -p net-offload --bench net_bench`.
//!
//! ovs-ofctl and ovs-vsctl are used here only as baselines.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use net_offload::openflow::{Flow, FlowMod, OpenFlowClient};
use net_offload::ovsdb::{BridgeSpec, OvsdbClient, PortSpec, owner_value, vswitch_monitor};
use net_offload::sandbox::{Daemon, Netns, OvsSandbox, SandboxConfig};

type Res<T> = Result<T, Box<dyn Error>>;

const BRIDGE: &str = "br-int";
const COOKIE: u64 = 0xbe;
const FLOWS: u32 = 100_000;
const PORTS: usize = 1000;
/// Individual ovs-vsctl calls measured, extrapolated linearly to `PORTS` if
/// fewer (a lower bound: each call costs more as the bridge grows).
const SINGLE_CALLS: usize = PORTS;
/// Rounds of the flow comparison (alternating order); medians are reported.
const FLOW_ROUNDS: usize = 3;

/// A sandbox in its own directory, removed after the daemons stop.
struct Sandbox {
    sandbox: Option<OvsSandbox>,
    dir: PathBuf,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        drop(self.sandbox.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Sandbox {
    async fn start(tag: &str) -> Res<Sandbox> {
        let dir = PathBuf::from(format!("/tmp/nb-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = SandboxConfig {
            netns: Netns::Private,
            ..SandboxConfig::new(&dir)
        };
        let sandbox = OvsSandbox::start(config).await?;
        Ok(Sandbox {
            sandbox: Some(sandbox),
            dir,
        })
    }

    fn ovs(&self) -> &OvsSandbox {
        self.sandbox.as_ref().expect("sandbox running")
    }

    fn vswitchd_pid(&self) -> Res<i32> {
        self.ovs()
            .pid(Daemon::Vswitchd)
            .ok_or_else(|| "ovs-vswitchd is not running".into())
    }

    fn db_arg(&self) -> String {
        format!("--db=unix:{}", self.ovs().db_socket().display())
    }

    /// Connects a monitoring OVSDB client and creates br-int with it.
    async fn bridge(&self) -> Res<OvsdbClient> {
        let client =
            OvsdbClient::connect(self.ovs().client_config().with_monitor(vswitch_monitor()))
                .await?;
        client
            .ensure_bridge(&BridgeSpec {
                name: BRIDGE.into(),
                datapath_type: "netdev".into(),
                fail_mode: Some("secure".into()),
                protocols: vec!["OpenFlow13".into(), "OpenFlow14".into()],
                owner: owner_value("bench", "br-int"),
            })
            .await?;
        // Ready once ovs-vswitchd has the bridge: its local port has an ofport
        // and the management socket exists.
        wait_ofports(&client, 1, |n| n == BRIDGE).await?;
        let mgmt = self.ovs().mgmt_socket(BRIDGE);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !mgmt.exists() {
            if Instant::now() > deadline {
                return Err(format!("{} did not appear", mgmt.display()).into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(client)
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: i32) -> Res<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').ok_or("bad /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command name: state is field 3, utime 14, stime 15.
    let utime: u64 = fields.get(11).ok_or("no utime")?.parse()?;
    let stime: u64 = fields.get(12).ok_or("no stime")?.parse()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((utime + stime) as f64 / hz)
}

/// Waits until at least `count` interfaces whose name satisfies `pick` have
/// an ofport assigned by ovs-vswitchd (seen in the client's replica).
async fn wait_ofports(client: &OvsdbClient, count: usize, pick: impl Fn(&str) -> bool) -> Res<()> {
    let mut changes = client.replica_changes();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let ready = client.read_replica(|r| {
            r.interfaces().map(|ifaces| {
                ifaces
                    .iter()
                    .filter(|i| pick(&i.name) && i.ofport.is_some_and(|p| p > 0))
                    .count()
            })
        })?;
        if ready >= count {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("only {ready} of {count} interfaces got an ofport").into());
        }
        let _ = tokio::time::timeout(left, changes.changed()).await;
    }
}

fn run(program: &str, args: &[String]) -> Res<()> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        return Err(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}

fn flows() -> Res<Vec<Flow>> {
    (0..FLOWS)
        .map(|i| {
            let (a, b, c) = (i >> 16, (i >> 8) & 0xff, i & 0xff);
            format!(
                "table=0, priority=100, cookie={COOKIE:#x}, in_port={}, dl_dst=02:00:00:{a:02x}:{b:02x}:{c:02x}, \
                 metadata={i:#x}, actions=set_field:{i}->reg1,goto_table:10",
                i % 1000 + 1
            )
            .parse::<Flow>()
            .map_err(|e| format!("flow {i}: {e}").into())
        })
        .collect()
}

struct Sample {
    wall: f64,
    cpu: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn bench_flows() -> Res<(Sample, Sample)> {
    let sb = Sandbox::start("flows").await?;
    let _db = sb.bridge().await?;
    let mgmt = sb.ovs().mgmt_socket(BRIDGE);
    let pid = sb.vswitchd_pid()?;
    let flows = flows()?;
    let mods: Vec<FlowMod> = flows.iter().cloned().map(FlowMod::add).collect();
    let file = sb.dir.join("flows.txt");
    let mut text = String::with_capacity(flows.len() * 128);
    for f in &flows {
        text.push_str(&f.to_string());
        text.push('\n');
    }
    std::fs::write(&file, text)?;
    let mut client = OpenFlowClient::connect_unix(&mgmt).await?;
    let clear = [FlowMod::delete_by_cookie(None, COOKIE, u64::MAX)];

    let (mut ours_w, mut ours_c, mut base_w, mut base_c) = (vec![], vec![], vec![], vec![]);
    for round in 0..FLOW_ROUNDS {
        for ours_first in [round % 2 == 0, round % 2 != 0] {
            if ours_first {
                let cpu0 = cpu_seconds(pid)?;
                let t = Instant::now();
                client.bundle(&mods).await?;
                ours_w.push(t.elapsed().as_secs_f64());
                ours_c.push(cpu_seconds(pid)? - cpu0);
            } else {
                let args = [
                    "--bundle".to_owned(),
                    "-O".to_owned(),
                    "OpenFlow14".to_owned(),
                    "add-flows".to_owned(),
                    format!("unix:{}", mgmt.display()),
                    file.display().to_string(),
                ];
                let cpu0 = cpu_seconds(pid)?;
                let t = Instant::now();
                run("ovs-ofctl", &args)?;
                base_w.push(t.elapsed().as_secs_f64());
                base_c.push(cpu_seconds(pid)? - cpu0);
            }
            check_flow_count(&mgmt, FLOWS as usize)?;
            client.flow_mods(&clear).await?;
        }
    }
    drop(client);
    Ok((
        Sample {
            wall: median(ours_w),
            cpu: median(ours_c),
        },
        Sample {
            wall: median(base_w),
            cpu: median(base_c),
        },
    ))
}

/// Witness that a run installed all flows (outside the timed part).
fn check_flow_count(mgmt: &Path, want: usize) -> Res<()> {
    let out = Command::new("ovs-ofctl")
        .args(["-O", "OpenFlow14", "dump-aggregate"])
        .arg(format!("unix:{}", mgmt.display()))
        .arg(format!("cookie={COOKIE:#x}/-1"))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let count = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("flow_count="))
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or_else(|| format!("cannot read dump-aggregate: {text}"))?;
    if count != want {
        return Err(format!("expected {want} flows, found {count}").into());
    }
    Ok(())
}

fn port_name(i: usize) -> String {
    format!("p{i}")
}

fn is_port(name: &str) -> bool {
    name.strip_prefix('p')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// 1000 internal ports through `add_ports` (one transaction), until ofports.
async fn ports_ours() -> Res<f64> {
    let sb = Sandbox::start("pours").await?;
    let db = sb.bridge().await?;
    let specs: Vec<PortSpec> = (0..PORTS)
        .map(|i| PortSpec::internal(&port_name(i), &owner_value("port", &port_name(i))))
        .collect();
    let t = Instant::now();
    db.add_ports(BRIDGE, &specs).await?;
    wait_ofports(&db, PORTS, is_port).await?;
    Ok(t.elapsed().as_secs_f64())
}

/// One ovs-vsctl with 1000 `-- add-port`, until ofports.
async fn ports_vsctl_batched() -> Res<f64> {
    let sb = Sandbox::start("pbatch").await?;
    let db = sb.bridge().await?;
    let mut args = vec![sb.db_arg(), "--timeout=300".to_owned()];
    for i in 0..PORTS {
        let p = port_name(i);
        args.push("--".to_owned());
        args.extend(add_internal_port(&p));
    }
    let t = Instant::now();
    run("ovs-vsctl", &args)?;
    wait_ofports(&db, PORTS, is_port).await?;
    Ok(t.elapsed().as_secs_f64())
}

/// The ovs-vsctl words adding internal port `p` to the bridge.
fn add_internal_port(p: &str) -> [String; 8] {
    [
        "add-port",
        BRIDGE,
        p,
        "--",
        "set",
        "interface",
        p,
        "type=internal",
    ]
    .map(str::to_owned)
}

/// `SINGLE_CALLS` ovs-vsctl calls of one port each, until ofports.
async fn ports_vsctl_single() -> Res<f64> {
    let sb = Sandbox::start("psingle").await?;
    let db = sb.bridge().await?;
    let t = Instant::now();
    for i in 0..SINGLE_CALLS {
        let p = port_name(i);
        let mut args = vec![sb.db_arg(), "--timeout=60".to_owned()];
        args.extend(add_internal_port(&p));
        run("ovs-vsctl", &args)?;
    }
    wait_ofports(&db, SINGLE_CALLS, is_port).await?;
    Ok(t.elapsed().as_secs_f64())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// One table row; also kept as a `bench-row` line for `scripts/bench.sh`,
/// printed after the table.
fn row(
    rows: &mut Vec<String>,
    name: &str,
    ours: String,
    base: String,
    ratio: String,
    target: &str,
    met: bool,
) {
    println!(
        "| {name} | {ours} | {base} | {ratio} | {target} | {} |",
        if met { "yes" } else { "no" }
    );
    rows.push(format!(
        "bench-row\t{name}\t{ours}\t{base}\t{ratio}\t{target}\t{}",
        if met { "met" } else { "missed" }
    ));
}

/// A row of two times in seconds, `(ours, baseline)`, met when ours is at
/// most `max` times the baseline's; `how` (` (…)`) says how the baseline ran.
fn ratio_row(rows: &mut Vec<String>, name: &str, (ours, base): (f64, f64), how: &str, max: f64) {
    let ratio = ours / base;
    row(
        rows,
        name,
        format!("{ours:.3} s"),
        format!("{base:.3} s{how}"),
        format!("{ratio:.2}×"),
        &format!("≤ {max:.1}×"),
        ratio <= max,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let (ours, base) = bench_flows().await?;
    let p_ours = ports_ours().await?;
    let p_batch = ports_vsctl_batched().await?;
    let p_single = ports_vsctl_single().await?;
    let p_single_x = p_single * (PORTS / SINGLE_CALLS) as f64;

    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "Date: {}; nproc: {nproc}; CPU: {}; medians of {FLOW_ROUNDS} rounds for flows.\n",
        date(),
        cpu_model()
    );
    println!("| row | ours | baseline | ratio | target | met? |");
    println!("|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    ratio_row(
        &mut rows,
        "100k flows, one bundle: wall",
        (ours.wall, base.wall),
        " (`ovs-ofctl --bundle add-flows`)",
        0.6,
    );
    ratio_row(
        &mut rows,
        "100k flows, one bundle: ovs-vswitchd CPU",
        (ours.cpu, base.cpu),
        "",
        1.2,
    );
    ratio_row(
        &mut rows,
        "1000 internal ports, one transaction, until ofports",
        (p_ours, p_batch),
        " (one `ovs-vsctl` with 1000 `-- add-port`)",
        1.0,
    );
    let how = if SINGLE_CALLS == PORTS {
        format!("{p_single:.1} s ({PORTS} `ovs-vsctl` calls, one port each)")
    } else {
        format!(
            "{p_single_x:.1} s ({SINGLE_CALLS} calls took {p_single:.2} s, ×{}; a lower bound)",
            PORTS / SINGLE_CALLS
        )
    };
    let speedup = p_single_x / p_ours;
    row(
        &mut rows,
        "1000 internal ports vs one `ovs-vsctl` per port",
        format!("{p_ours:.3} s"),
        how,
        format!("{speedup:.0}× faster"),
        "≥ 20× faster",
        speedup >= 20.0,
    );
    println!();
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
