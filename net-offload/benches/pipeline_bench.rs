//! The switch pipeline's CPU for one port added, at several numbers of
//! ports in one run: does the compile and diff of a change depend on how
//! many other ports the DPU holds? In-process (no switch): the same calls
//! a switch pass makes for one port added to one network
//! ([`IncrementalPipeline::update_networks`] with the input's ports by
//! network, then the changed segment's flow plan and meter plan), timed
//! with the thread's CPU clock. The baseline, measured in the same run at
//! each size: the whole compile and the whole diff against every
//! installed flow, which is what a pass costs without the per-network
//! cache.
//!
//! Every port is like `net-agent-bench --rules 27`'s (27 ingress TCP rules,
//! 100 ports per network, one tenant per network), plus a QoS rate limit
//! (a meter per port). Not a test: it prints a table and `bench-row`
//! lines (see `scripts/bench.sh`).
//!
//! With `--instructions`, also the instructions of one port added at each
//! size, counted by callgrind (needs valgrind): the work, apart from the
//! memory hierarchy that CPU time also measures.
//!
//! ```text
//! cargo bench -p net-offload --bench pipeline_bench [-- --quick] [--instructions]
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use net_offload::openflow::{Flow, MeterMod};
use net_offload::pipeline::FlowPlan;
use net_offload::pipeline::{
    Changes, DesiredNetworking, Encap, IncrementalPipeline, NetworkDesc, PortDesc, PortsByNetwork,
    QosDesc, RuleDesc, RuleProtocol, SecurityDesc, compile, plan_flows,
};
use net_offload::switch::plan::{MeterPlan, plan_meters, plan_meters_of};
use net_offload::switch::thread_cpu;

const PORTS_PER_NETWORK: usize = 100;
const RULES: usize = 27;

fn network(n: usize) -> NetworkDesc {
    NetworkDesc {
        id: format!("n{n:05}"),
        tenant: format!("t{n:05}"),
        vni: 1000 + n as u32,
        encap: Encap::Vxlan,
    }
}

/// Port `k` of network `k / PORTS_PER_NETWORK` (ids sort as numbers).
fn port(k: usize) -> Arc<PortDesc> {
    let n = k / PORTS_PER_NETWORK;
    let host = (k % PORTS_PER_NETWORK + 2) as u8;
    Arc::new(PortDesc {
        id: format!("p{k:07}"),
        tenant: format!("t{n:05}"),
        network: format!("n{n:05}"),
        mac: [0x02, 0, (k >> 16) as u8, (k >> 8) as u8, k as u8, 1],
        ips: vec![Ipv4Addr::new(10, (n / 256) as u8, (n % 256) as u8, host)],
        security: SecurityDesc {
            ingress: (0..RULES)
                .map(|i| RuleDesc {
                    protocol: RuleProtocol::Tcp,
                    cidr: None,
                    ports: Some((1000 + i as u16, 1000 + i as u16)),
                })
                .collect(),
            egress: None,
        },
        qos: Some(QosDesc {
            max_rate_kbps: 100_000,
            burst_kbits: 1000,
        }),
        representor: Some(format!("pf0vf{k}")),
        ofport: Some(k as u32 + 1),
    })
}

/// `ports` ports, by network, and the networking that holds them.
fn desired(ports: usize) -> (DesiredNetworking, PortsByNetwork) {
    let nets = ports.div_ceil(PORTS_PER_NETWORK);
    let all: Vec<Arc<PortDesc>> = (0..ports).map(port).collect();
    let by_network = all
        .chunks(PORTS_PER_NETWORK)
        .map(|c| (c[0].network.clone(), Arc::from(c.to_vec())))
        .collect();
    let d = DesiredNetworking {
        networks: (0..nets).map(network).collect(),
        ports: all,
        endpoints: Vec::new(),
        tunnel_ofports: BTreeMap::from([(Encap::Vxlan, 65000)]),
    };
    (d, by_network)
}

/// Run `r`'s new port of network `n`: its id sorts last in the network,
/// its ofport is new on the bridge.
fn new_port(n: usize, r: usize) -> Arc<PortDesc> {
    let mut extra = (*port(n * PORTS_PER_NETWORK)).clone();
    extra.id = format!("p{:07}x{r}", n * PORTS_PER_NETWORK + PORTS_PER_NETWORK - 1);
    extra.ofport = Some(60_000);
    extra.mac[5] = 2;
    Arc::new(extra)
}

/// `d` and `by_network` with port `extra` (of network `net`) added.
fn with_port(
    d: &DesiredNetworking,
    by_network: &PortsByNetwork,
    net: &str,
    extra: Arc<PortDesc>,
) -> (DesiredNetworking, PortsByNetwork) {
    let mut d = d.clone();
    let at = d.ports.partition_point(|p| p.id < extra.id);
    d.ports.insert(at, extra.clone());
    let mut by_network = by_network.clone();
    let mut group = by_network[net].to_vec();
    let at = group.partition_point(|p| p.id < extra.id);
    group.insert(at, extra);
    by_network.insert(net.to_string(), group.into());
    (d, by_network)
}

struct Run {
    compile: Duration,
    diff: Duration,
}

/// One port added to one network and taken out again, `runs` times over
/// the networks in turn; the CPU of each add's compile and diff.
fn incremental(ports: usize, runs: usize) -> Vec<Run> {
    let (d, by_network) = desired(ports);
    let mut inc = IncrementalPipeline::new();
    let _ = inc.update(&d);
    let mut meters: BTreeMap<u32, MeterMod> = inc.meters().clone();
    let nets = d.networks.len();
    let mut out = Vec::with_capacity(runs);
    for r in 0..runs {
        let n = r % nets;
        let net = network(n).id;
        let (added, added_by) = with_port(&d, &by_network, &net, new_port(n, r));
        let only = BTreeSet::from([net.as_str()]);

        let (run, plan, meter_plan) = one_port_added(&mut inc, &added, &added_by, &only, &meters);
        out.push(run);
        assert_eq!(
            plan.add.len() + plan.modify.len(),
            RULES + 6,
            "one port's flows"
        );
        assert_eq!(meter_plan.set.len(), 1, "one port's meter");

        // Back to `ports` ports (not timed).
        let back = inc.update_networks(
            &d,
            Some(&by_network),
            &only,
            |p| p.ofport,
            &d.tunnel_ofports,
        );
        assert!(matches!(back, Some(Changes::Segments(_))));
        meters = inc.meters().clone();
    }
    out
}

/// The timed part of one run: what a switch pass computes for one port
/// added to network `only` (not inlined: `callgrind --toggle-collect`
/// counts its instructions alone).
#[inline(never)]
fn one_port_added(
    inc: &mut IncrementalPipeline,
    added: &DesiredNetworking,
    added_by: &PortsByNetwork,
    only: &BTreeSet<&str>,
    meters: &BTreeMap<u32, MeterMod>,
) -> (Run, FlowPlan, MeterPlan) {
    let cpu = thread_cpu();
    let changes = inc.update_networks(
        added,
        Some(added_by),
        only,
        |p| p.ofport,
        &added.tunnel_ofports,
    );
    let compiled = thread_cpu();
    let Some(Changes::Segments(segments)) = changes else {
        panic!("one network changed: its segment alone");
    };
    let plan = inc.plan_segments(&segments);
    let ids = inc.meter_ids_of(&segments);
    let meter_plan = plan_meters_of(inc.meters(), meters, &ids);
    drop(segments);
    let diffed = thread_cpu();
    let run = Run {
        compile: compiled - cpu,
        diff: diffed - compiled,
    };
    (run, plan, meter_plan)
}

/// The whole compile and the whole diff (every flow against every
/// installed one) of the same change, `runs` times.
fn whole(ports: usize, runs: usize) -> Vec<Run> {
    let (d, by_network) = desired(ports);
    let before = compile(&d);
    let installed: Vec<Flow> = before.flows.into_iter().map(|f| f.flow).collect();
    let installed_meters = before.meters;
    let mut out = Vec::with_capacity(runs);
    for r in 0..runs {
        let n = r % d.networks.len();
        let net = network(n).id;
        let (added, _) = with_port(&d, &by_network, &net, new_port(n, r));
        let cpu = thread_cpu();
        let c = compile(&added);
        let compiled = thread_cpu();
        let plan = plan_flows(c.flows.iter().map(|f| &f.flow), &installed);
        let meter_plan = plan_meters(&c.meters, &installed_meters);
        drop(c);
        let diffed = thread_cpu();
        out.push(Run {
            compile: compiled - cpu,
            diff: diffed - compiled,
        });
        assert_eq!(
            plan.add.len() + plan.modify.len(),
            RULES + 6,
            "one port's flows"
        );
        assert_eq!(meter_plan.set.len(), 1, "one port's meter");
    }
    out
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

struct Row {
    ports: usize,
    compile: Duration,
    diff: Duration,
    total: Duration,
    total_p99: Duration,
    /// `None` with `--whole-runs 0`.
    whole: Option<Duration>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let (mut sizes, mut runs, mut whole_runs): (Vec<usize>, usize, usize) = if quick {
        (vec![300, 1000, 3000], 50, 2)
    } else {
        (vec![1000, 3000, 10_000], 300, 3)
    };
    // `--sizes 300,3000 --runs 20 --whole-runs 0`: e.g. under callgrind.
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.as_str())
    };
    if let Some(v) = value("--sizes") {
        sizes = v
            .split(',')
            .map(|s| s.parse().expect("--sizes: numbers"))
            .collect();
    }
    if let Some(v) = value("--runs") {
        runs = v.parse().expect("--runs: a number");
    }
    if let Some(v) = value("--whole-runs") {
        whole_runs = v.parse().expect("--whole-runs: a number");
    }
    println!(
        "pipeline_bench: one port added to one network of {PORTS_PER_NETWORK} ports \
         ({RULES} ingress rules and a meter each), thread CPU; {runs} runs per size, \
         {whole_runs} of the whole compile + diff"
    );
    let mut rows = Vec::new();
    for &ports in &sizes {
        let mut inc = incremental(ports, runs);
        let mut whole = whole(ports, whole_runs);
        let mut compile: Vec<Duration> = inc.iter().map(|r| r.compile).collect();
        let mut diff: Vec<Duration> = inc.iter().map(|r| r.diff).collect();
        let mut total: Vec<Duration> = inc.drain(..).map(|r| r.compile + r.diff).collect();
        let mut whole_total: Vec<Duration> = whole.drain(..).map(|r| r.compile + r.diff).collect();
        rows.push(Row {
            ports,
            compile: percentile(&mut compile, 0.5),
            diff: percentile(&mut diff, 0.5),
            total: percentile(&mut total, 0.5),
            total_p99: percentile(&mut total, 0.99),
            whole: (!whole_total.is_empty()).then(|| percentile(&mut whole_total, 0.5)),
        });
    }
    println!();
    println!(
        "| ports | flows | compile p50 | diff p50 | compile + diff p50 | p99 | whole compile + diff p50 (baseline) | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.ports,
            r.ports * (RULES + 6),
            ms(r.compile),
            ms(r.diff),
            ms(r.total),
            ms(r.total_p99),
            r.whole.map_or("-".into(), ms),
            r.whole.map_or("-".into(), |w| format!(
                "{:.4}×",
                r.total.as_secs_f64() / w.as_secs_f64()
            )),
        );
    }
    let (first, last) = (&rows[0], &rows[rows.len() - 1]);
    let growth = last.total.as_secs_f64() / first.total.as_secs_f64();
    let more = last.ports as f64 / first.ports as f64;
    println!(
        "\ncompile + diff CPU p50, {} ports ÷ {} ports ({more:.0}× the ports): {growth:.2}×",
        last.ports, first.ports,
    );
    // CPU time also grows with the memory the other ports' flows take
    // (caches, TLB, page faults): no verdict; the instruction count below
    // is the measure of the work.
    println!(
        "bench-row\tone port added: pipeline compile + diff CPU p50, {} → {} ports (in-process)\t{} → {}\t{} → {} (whole compile + diff)\t{:.4}× (growth {growth:.2}× for {more:.0}× the ports)\t-\t-",
        first.ports,
        last.ports,
        ms(first.total),
        ms(last.total),
        first.whole.map_or("-".into(), ms),
        last.whole.map_or("-".into(), ms),
        last.whole
            .map_or(f64::NAN, |w| last.total.as_secs_f64() / w.as_secs_f64()),
    );
    if args.iter().any(|a| a == "--instructions") {
        instructions(&sizes);
    }
}

/// Instructions of one port added at each size, counted by callgrind
/// (`--toggle-collect` of [`one_port_added`] alone, this program run again
/// under valgrind per size): stable on a shared machine, where CPU time is
/// not, and blind to the memory hierarchy, so it shows whether the work
/// itself grows with the other ports.
fn instructions(sizes: &[usize]) {
    const RUNS: usize = 20;
    let me = std::env::current_exe().expect("the bench's own path");
    let mut counts = Vec::new();
    for &ports in sizes {
        let out = std::process::Command::new("valgrind")
            .args([
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                "--toggle-collect=*one_port_added*",
            ])
            .arg(&me)
            .args(["--sizes", &ports.to_string(), "--runs", &RUNS.to_string()])
            .args(["--whole-runs", "0"])
            .output();
        let collected = out.ok().and_then(|o| {
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .find_map(|l| {
                    l.split_once("Collected :")
                        .map(|(_, n)| n.trim().parse::<u64>())
                })
                .and_then(Result::ok)
        });
        let Some(n) = collected else {
            println!(
                "\nbench-row\tone port added: pipeline instructions (callgrind)\t-\t-\t-\t-\tfailed\tvalgrind missing or failed"
            );
            return;
        };
        counts.push((ports, n as f64 / RUNS as f64));
    }
    println!("\n| ports | instructions per port added (callgrind, {RUNS} runs) |");
    println!("|---|---|");
    for (ports, n) in &counts {
        println!("| {ports} | {:.2} M |", n / 1e6);
    }
    let ((p0, n0), (p1, n1)) = (counts[0], counts[counts.len() - 1]);
    let growth = n1 / n0;
    // Independent of the number of ports: the same work (to the
    // allocator's and the maps' few percent) at every size.
    let target = 1.05;
    println!(
        "bench-row\tone port added: pipeline instructions (callgrind), {p0} → {p1} ports\t{:.2} M → {:.2} M\t-\t{growth:.3}× (for {:.0}× the ports)\tgrowth ≤ {target}×\t{}",
        n0 / 1e6,
        n1 / 1e6,
        p1 as f64 / p0 as f64,
        if growth <= target { "met" } else { "missed" },
    );
}
