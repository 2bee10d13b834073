//! QoS for the kernel backend: traffic shaping of a volume's own NVMe/TCP
//! port with the kernel's traffic control, programmed over rtnetlink
//! (`NETLINK_ROUTE`, `RTM_{NEW,DEL,GET}{QDISC,TCLASS,TFILTER}`) by the agent
//! itself.
//!
//! Why not the block layer: nvmet serves I/O from kernel workers in the root
//! cgroup, where cgroup v2 `io.max` cannot be set, so `io.max` never limits
//! what a remote host reads through nvmet (checked in the VM rig). The data a
//! volume sends to its host, however, leaves on one TCP port when the volume
//! has a port of its own: shaping that port's egress limits the volume.
//!
//! Layout on the interface that holds the port's address (e.g. `lo` for
//! 127.0.0.1): a root `htb` qdisc with handle [`QDISC_MAJOR`]`:` whose
//! default class is 0, so unclassified traffic passes unshaped; per volume
//! slot `k` one class `4e56:k` with `rate = ceil = limit`, and one `u32`
//! filter at priority `k` sending IPv4 TCP segments with source port
//! `port k` into it.
//!
//! Limits: only what the DPU sends (the host's reads, and the target's
//! responses to writes) is shaped; data the host writes arrives on ingress,
//! which egress shaping cannot see. IPv4 only (the filter reads the TCP
//! source port at offset 20 of an IP header without options). HTB counts
//! bytes on the wire, NVMe/TCP and TCP/IP headers included.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::IpAddr;

use dpu_netlink::attr::{self as nla, put as push_attr};
use dpu_netlink::msg::{self, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};
use dpu_netlink::{NETLINK_ROUTE, Socket};

/// The major number of the agent's root qdisc: `4e56:` ("NV").
pub const QDISC_MAJOR: u16 = 0x4e56;
const TC_H_ROOT: u32 = 0xFFFF_FFFF;

const RTM_NEWQDISC: u16 = 36;
const RTM_DELQDISC: u16 = 37;
const RTM_GETQDISC: u16 = 38;
const RTM_NEWTCLASS: u16 = 40;
const RTM_DELTCLASS: u16 = 41;
const RTM_GETTCLASS: u16 = 42;
const RTM_NEWTFILTER: u16 = 44;
const RTM_DELTFILTER: u16 = 45;
const RTM_GETTFILTER: u16 = 46;

const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
const TCA_U32_CLASSID: u16 = 1;
const TCA_U32_SEL: u16 = 5;
const TC_U32_TERMINAL: u8 = 1;
const TC_LINKLAYER_ETHERNET: u8 = 1;
const ETH_P_IP: u16 = 0x0800;
/// HTB's nanoseconds per "tick" (`PSCHED_SHIFT` = 6).
const PSCHED_NS_PER_TICK: u64 = 64;

/// `major:minor` handle.
pub fn handle(major: u16, minor: u16) -> u32 {
    (u32::from(major) << 16) | u32::from(minor)
}

/// What is on the interface, as far as the planner cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcObserved {
    pub ifname: String,
    pub ifindex: u32,
    /// The root qdisc: `None` when it is the kernel's default (handle 0,
    /// e.g. `noqueue` on `lo`), else its kind and major number.
    pub root: Option<(String, u16)>,
    /// Classes of our qdisc: minor → rate in bytes per second.
    pub classes: BTreeMap<u16, u64>,
    /// Priorities of the filters on our qdisc.
    pub filter_prios: BTreeSet<u16>,
}

impl TcObserved {
    /// Whether the root qdisc is the agent's.
    pub fn ours(&self) -> bool {
        matches!(&self.root, Some((kind, major)) if kind == "htb" && *major == QDISC_MAJOR)
    }
}

/// One change to traffic control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcOp {
    AddRoot,
    DeleteRoot,
    /// Creates or changes class `minor`'s rate (bytes per second).
    SetClass {
        minor: u16,
        rate: u64,
    },
    DeleteClass {
        minor: u16,
    },
    /// IPv4 TCP with source port `sport` → class `minor`, at priority `prio`.
    AddFilter {
        prio: u16,
        sport: u16,
        minor: u16,
    },
    DeleteFilter {
        prio: u16,
    },
}

impl fmt::Display for TcOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = QDISC_MAJOR;
        match self {
            TcOp::AddRoot => write!(f, "qdisc add root handle {q:x}: htb default 0"),
            TcOp::DeleteRoot => write!(f, "qdisc del root handle {q:x}:"),
            TcOp::SetClass { minor, rate } => write!(
                f,
                "class replace parent {q:x}: classid {q:x}:{minor:x} htb rate {rate}Bps ceil {rate}Bps"
            ),
            TcOp::DeleteClass { minor } => write!(f, "class del classid {q:x}:{minor:x}"),
            TcOp::AddFilter { prio, sport, minor } => write!(
                f,
                "filter add parent {q:x}: protocol ip prio {prio} u32 match ip protocol 6 0xff \
                 match ip sport {sport} 0xffff flowid {q:x}:{minor:x}"
            ),
            TcOp::DeleteFilter { prio } => {
                write!(f, "filter del parent {q:x}: protocol ip prio {prio}")
            }
        }
    }
}

/// The interface holding `addr` (from `getifaddrs`), with its index.
pub fn interface_of(addr: IpAddr) -> io::Result<(String, u32)> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills ifap with a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = None;
    let mut p = ifap;
    while !p.is_null() {
        // SAFETY: p walks the list getifaddrs returned; entries stay valid
        // until freeifaddrs.
        let ifa = unsafe { &*p };
        p = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr of the family it names.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        let a = match family {
            libc::AF_INET => {
                // SAFETY: the family says sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes())
            }
            libc::AF_INET6 => {
                // SAFETY: the family says sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                IpAddr::from(sin6.sin6_addr.s6_addr)
            }
            _ => continue,
        };
        if a == addr {
            // SAFETY: ifa_name is a NUL-terminated string.
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
            // SAFETY: as above.
            let index = unsafe { libc::if_nametoindex(ifa.ifa_name) };
            found = Some((name.to_string_lossy().into_owned(), index));
            break;
        }
    }
    // SAFETY: ifap came from getifaddrs.
    unsafe { libc::freeifaddrs(ifap) };
    found.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface has the address {addr}"),
        )
    })
}

fn tcmsg(ifindex: u32, handle: u32, parent: u32, info: u32) -> Vec<u8> {
    let mut b = vec![0u8; 4]; // family AF_UNSPEC + padding
    b.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    b.extend_from_slice(&handle.to_ne_bytes());
    b.extend_from_slice(&parent.to_ne_bytes());
    b.extend_from_slice(&info.to_ne_bytes());
    b
}

/// A native-endian u32 at `off` of a fixed struct; 0 when it is not there.
fn u32_at(b: &[u8], off: usize) -> u32 {
    nla::u32_at(b, off).unwrap_or(0)
}

/// A `NETLINK_ROUTE` socket ([`dpu_netlink::Socket`]) for one exchange at a
/// time.
struct Netlink {
    sock: Socket,
}

impl Netlink {
    fn open() -> io::Result<Netlink> {
        Ok(Netlink {
            sock: Socket::open(NETLINK_ROUTE)?,
        })
    }

    /// Sends one request; returns the bodies of every answer message (for
    /// a dump) or fails with the kernel's error.
    /// Timed in [`crate::timing`] as backend `tc`, by message type.
    fn exchange(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let label = match kind {
            RTM_NEWQDISC => "newqdisc",
            RTM_DELQDISC => "delqdisc",
            RTM_GETQDISC => "getqdisc",
            RTM_NEWTCLASS => "newtclass",
            RTM_DELTCLASS => "deltclass",
            RTM_GETTCLASS => "gettclass",
            RTM_NEWTFILTER => "newtfilter",
            RTM_DELTFILTER => "deltfilter",
            RTM_GETTFILTER => "gettfilter",
            _ => "other",
        };
        crate::timing::time("tc", label, || {
            let mut m = msg::message(kind, flags | NLM_F_REQUEST, 0, body);
            Ok(self.sock.request(&mut m)?)
        })
    }
}

fn htb_opt(rate: u64) -> Vec<u8> {
    // struct tc_ratespec: cell_log, linklayer, overhead, cell_align, mpu, rate.
    let spec = |r: u64| {
        let mut s = vec![0u8, TC_LINKLAYER_ETHERNET, 0, 0, 0, 0, 0, 0];
        s.extend_from_slice(&(r.min(u64::from(u32::MAX)) as u32).to_ne_bytes());
        s
    };
    // Burst: 50 ms at the rate, at least 256 KiB (loopback segments are up
    // to 64 KiB); HTB takes it as time in ticks.
    let burst = (rate / 20).max(256 * 1024);
    let ticks = burst.saturating_mul(1_000_000_000) / rate.max(1) / PSCHED_NS_PER_TICK;
    let ticks = ticks.min(u64::from(u32::MAX)) as u32;
    let mut o = spec(rate);
    o.extend(spec(rate));
    o.extend_from_slice(&ticks.to_ne_bytes()); // buffer
    o.extend_from_slice(&ticks.to_ne_bytes()); // cbuffer
    o.extend_from_slice(&200_000u32.to_ne_bytes()); // quantum
    o.extend_from_slice(&0u32.to_ne_bytes()); // level
    o.extend_from_slice(&0u32.to_ne_bytes()); // prio
    o
}

fn u32_selector(sport: u16) -> Vec<u8> {
    // struct tc_u32_sel: flags, offshift, nkeys, pad, offmask, off, offoff,
    // hoff, hmask; then struct tc_u32_key {mask, val, off, offmask} (be32
    // mask and value over the IP header).
    let mut s = vec![TC_U32_TERMINAL, 0, 2, 0];
    s.extend_from_slice(&[0u8; 12]);
    let mut key = |mask: u32, val: u32, off: i32| {
        s.extend_from_slice(&mask.to_be_bytes());
        s.extend_from_slice(&val.to_be_bytes());
        s.extend_from_slice(&off.to_ne_bytes());
        s.extend_from_slice(&0i32.to_ne_bytes());
    };
    // IP protocol (byte 9) = TCP.
    key(0x00ff_0000, 6 << 16, 8);
    // TCP source port: the first 16 bits after a 20-byte IP header.
    key(0xffff_0000, u32::from(sport) << 16, 20);
    s
}

/// Reads what the agent's QoS needs from interface `ifindex`.
pub fn observe(ifname: &str, ifindex: u32) -> io::Result<TcObserved> {
    let mut nl = Netlink::open()?;
    let mut obs = TcObserved {
        ifname: ifname.to_string(),
        ifindex,
        ..TcObserved::default()
    };
    obs.root = root_qdisc(
        &nl.exchange(RTM_GETQDISC, NLM_F_DUMP, &tcmsg(0, 0, 0, 0))?,
        ifindex,
    );
    if !obs.ours() {
        return Ok(obs);
    }
    let ours = handle(QDISC_MAJOR, 0);
    obs.classes = classes(
        &nl.exchange(RTM_GETTCLASS, NLM_F_DUMP, &tcmsg(ifindex, 0, ours, 0))?,
        ifindex,
    );
    obs.filter_prios = filter_prios(
        &nl.exchange(RTM_GETTFILTER, NLM_F_DUMP, &tcmsg(ifindex, 0, ours, 0))?,
        ifindex,
    );
    Ok(obs)
}

/// What [`observe`] concludes from the bodies of the qdisc, class and filter
/// dumps it read (the class and filter dumps only when the root qdisc is
/// ours). Pure; the fuzz target `tc_replies` feeds it arbitrary bodies.
pub fn observe_dumps(
    ifname: &str,
    ifindex: u32,
    qdiscs: &[Vec<u8>],
    class_dump: &[Vec<u8>],
    filter_dump: &[Vec<u8>],
) -> TcObserved {
    let mut obs = TcObserved {
        ifname: ifname.to_string(),
        ifindex,
        root: root_qdisc(qdiscs, ifindex),
        ..TcObserved::default()
    };
    if obs.ours() {
        obs.classes = classes(class_dump, ifindex);
        obs.filter_prios = filter_prios(filter_dump, ifindex);
    }
    obs
}

/// The root qdisc of `ifindex` in a qdisc dump (the last one reported).
fn root_qdisc(dump: &[Vec<u8>], ifindex: u32) -> Option<(String, u16)> {
    let mut root = None;
    for m in dump {
        if u32_at(m, 4) != ifindex || u32_at(m, 12) != TC_H_ROOT {
            continue;
        }
        let h = u32_at(m, 8);
        if h == 0 {
            continue;
        }
        let kind = nla::attrs(&m[20.min(m.len())..])
            .get(TCA_KIND)
            .map(nla::string)
            .unwrap_or_default();
        root = Some((kind, (h >> 16) as u16));
    }
    root
}

/// Our classes on `ifindex` in a class dump: minor → rate in bytes/s.
fn classes(dump: &[Vec<u8>], ifindex: u32) -> BTreeMap<u16, u64> {
    let mut classes = BTreeMap::new();
    for m in dump {
        let h = u32_at(m, 8);
        if u32_at(m, 4) != ifindex || h >> 16 != u32::from(QDISC_MAJOR) || h & 0xffff == 0 {
            continue;
        }
        let mut rate = 0u64;
        for (t, v) in nla::attrs(&m[20.min(m.len())..]) {
            if t != TCA_OPTIONS {
                continue;
            }
            for (t, v) in nla::attrs(v) {
                match t {
                    TCA_HTB_PARMS => rate = rate.max(u64::from(u32_at(v, 8))),
                    TCA_HTB_RATE64 => {
                        if let Ok(r) = nla::u64(v) {
                            rate = r;
                        }
                    }
                    _ => {}
                }
            }
        }
        classes.insert((h & 0xffff) as u16, rate);
    }
    classes
}

/// The priorities of the filters on `ifindex` in a filter dump.
fn filter_prios(dump: &[Vec<u8>], ifindex: u32) -> BTreeSet<u16> {
    dump.iter()
        .filter(|m| u32_at(m, 4) == ifindex)
        .map(|m| (u32_at(m, 16) >> 16) as u16)
        .filter(|prio| *prio != 0)
        .collect()
}

/// Applies one change on interface `ifindex`.
pub fn apply(ifindex: u32, op: &TcOp) -> io::Result<()> {
    let mut nl = Netlink::open()?;
    let q = handle(QDISC_MAJOR, 0);
    let proto_ip = u32::from(ETH_P_IP.to_be());
    let (kind, flags, body) = match op {
        TcOp::AddRoot => {
            let mut b = tcmsg(ifindex, q, TC_H_ROOT, 0);
            push_attr(&mut b, TCA_KIND, b"htb\0");
            // struct tc_htb_glob: version 3, rate2quantum 10, defcls 0
            // (unclassified traffic is not shaped), debug, direct_pkts.
            let mut glob = Vec::new();
            for v in [3u32, 10, 0, 0, 0] {
                glob.extend_from_slice(&v.to_ne_bytes());
            }
            let mut opts = Vec::new();
            push_attr(&mut opts, TCA_HTB_INIT, &glob);
            push_attr(&mut b, TCA_OPTIONS, &opts);
            (RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, b)
        }
        TcOp::DeleteRoot => (RTM_DELQDISC, 0, tcmsg(ifindex, q, TC_H_ROOT, 0)),
        TcOp::SetClass { minor, rate } => {
            let mut b = tcmsg(ifindex, handle(QDISC_MAJOR, *minor), q, 0);
            push_attr(&mut b, TCA_KIND, b"htb\0");
            let mut opts = Vec::new();
            push_attr(&mut opts, TCA_HTB_PARMS, &htb_opt(*rate));
            if *rate > u64::from(u32::MAX) {
                push_attr(&mut opts, TCA_HTB_RATE64, &rate.to_ne_bytes());
                push_attr(&mut opts, TCA_HTB_CEIL64, &rate.to_ne_bytes());
            }
            push_attr(&mut b, TCA_OPTIONS, &opts);
            (RTM_NEWTCLASS, NLM_F_CREATE, b)
        }
        TcOp::DeleteClass { minor } => (
            RTM_DELTCLASS,
            0,
            tcmsg(ifindex, handle(QDISC_MAJOR, *minor), q, 0),
        ),
        TcOp::AddFilter { prio, sport, minor } => {
            let mut b = tcmsg(ifindex, 0, q, (u32::from(*prio) << 16) | proto_ip);
            push_attr(&mut b, TCA_KIND, b"u32\0");
            let mut opts = Vec::new();
            push_attr(
                &mut opts,
                TCA_U32_CLASSID,
                &handle(QDISC_MAJOR, *minor).to_ne_bytes(),
            );
            push_attr(&mut opts, TCA_U32_SEL, &u32_selector(*sport));
            push_attr(&mut b, TCA_OPTIONS, &opts);
            (RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, b)
        }
        TcOp::DeleteFilter { prio } => (
            RTM_DELTFILTER,
            0,
            tcmsg(ifindex, 0, q, (u32::from(*prio) << 16) | proto_ip),
        ),
    };
    nl.exchange(kind, flags | NLM_F_ACK, &body).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_matches_tcp_source_port_in_network_order() {
        let s = u32_selector(4421);
        assert_eq!(s.len(), 16 + 2 * 16);
        assert_eq!(&s[..4], &[TC_U32_TERMINAL, 0, 2, 0]);
        // Second key: mask ffff0000, value 0x1145 << 16, offset 20.
        let k = &s[32..48];
        assert_eq!(&k[..4], &[0xff, 0xff, 0, 0]);
        assert_eq!(&k[4..8], &[0x11, 0x45, 0, 0]);
        assert_eq!(i32::from_ne_bytes(k[8..12].try_into().unwrap()), 20);
    }

    #[test]
    fn htb_options_carry_rate_and_burst_time() {
        let o = htb_opt(10 * 1024 * 1024);
        assert_eq!(o.len(), 44);
        assert_eq!(u32_at(&o, 8), 10 * 1024 * 1024);
        assert_eq!(u32_at(&o, 20), 10 * 1024 * 1024);
        // 50 ms of 10 MiB/s = 512 KiB; 50 ms in 64 ns ticks.
        assert_eq!(u32_at(&o, 24), 50_000_000 / 64);
        assert_eq!(o[1], TC_LINKLAYER_ETHERNET);
    }

    #[test]
    fn attributes_round_trip() {
        let mut b = Vec::new();
        push_attr(&mut b, TCA_KIND, b"htb\0");
        push_attr(&mut b, TCA_OPTIONS, &[1, 2, 3, 4, 5]);
        let a: Vec<_> = nla::attrs(&b).collect();
        assert_eq!(
            a,
            vec![
                (TCA_KIND, &b"htb\0"[..]),
                (TCA_OPTIONS, &[1, 2, 3, 4, 5][..])
            ]
        );
    }

    /// A qdisc as `RTM_NEWQDISC` of a dump reports it (tcmsg + TCA_KIND).
    fn qdisc_body(ifindex: u32, h: u32, kind: &[u8]) -> Vec<u8> {
        let mut b = tcmsg(ifindex, h, TC_H_ROOT, 0);
        push_attr(&mut b, TCA_KIND, kind);
        b
    }

    #[test]
    fn observe_dumps_reads_root_classes_and_filters() {
        let ours = handle(QDISC_MAJOR, 0);
        let qdiscs = vec![
            qdisc_body(2, 0, b"noqueue\0"),
            qdisc_body(1, ours, b"htb\0"),
        ];
        let mut class = tcmsg(1, handle(QDISC_MAJOR, 3), ours, 0);
        let mut opts = Vec::new();
        push_attr(&mut opts, TCA_HTB_PARMS, &htb_opt(1_000_000));
        push_attr(&mut class, TCA_OPTIONS, &opts);
        let filter = tcmsg(1, 0, ours, (4 << 16) | u32::from(ETH_P_IP.to_be()));
        let obs = observe_dumps("lo", 1, &qdiscs, &[class], &[filter]);
        assert!(obs.ours());
        assert_eq!(obs.classes, BTreeMap::from([(3, 1_000_000)]));
        assert_eq!(obs.filter_prios, BTreeSet::from([4]));
        // Someone else's root qdisc: classes and filters are not read.
        let other = observe_dumps("lo", 2, &qdiscs, &[], &[]);
        assert_eq!(other.root, None, "handle 0 is the kernel's default");
    }

    #[test]
    fn rendered_like_tc() {
        assert_eq!(
            TcOp::AddFilter {
                prio: 2,
                sport: 4422,
                minor: 2
            }
            .to_string(),
            "filter add parent 4e56: protocol ip prio 2 u32 match ip protocol 6 0xff \
             match ip sport 4422 0xffff flowid 4e56:2"
        );
    }

    /// Root only. Through the shared netlink layer against the kernel, in a
    /// private network namespace of the test's own thread: the root qdisc,
    /// a class and a filter are made, read back by our dumps and seen by
    /// `tc` (the witness), then removed. TENANCY.md invariant 6: a volume's
    /// QoS limit is what the kernel enforces — the class and the filter on
    /// the volume's own port, and nothing else on the interface.
    #[test]
    fn apply_and_observe_against_the_kernel() {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "needs root: run the tests as root (scripts/test.sh does)"
        );
        std::thread::spawn(|| {
            // SAFETY: unshare affects only this thread, which ends with the
            // test; the namespace dies with it.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            let ns = format!("--net=/proc/{}/task/{tid}/ns/net", std::process::id());
            let tc = |args: &[&str]| {
                let out = std::process::Command::new("nsenter")
                    .arg(&ns)
                    .arg("tc")
                    .args(args)
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            // A new namespace's only interface: `lo`, index 1.
            let (name, index) = ("lo", 1);
            assert!(!observe(name, index).unwrap().ours());
            for op in [
                TcOp::AddRoot,
                TcOp::SetClass {
                    minor: 3,
                    rate: 1_000_000,
                },
                TcOp::AddFilter {
                    prio: 3,
                    sport: 4423,
                    minor: 3,
                },
            ] {
                apply(index, &op).unwrap();
            }
            let obs = observe(name, index).unwrap();
            assert!(obs.ours(), "{obs:?}");
            assert_eq!(obs.classes, BTreeMap::from([(3, 1_000_000)]));
            assert_eq!(obs.filter_prios, BTreeSet::from([3]));
            let classes = tc(&["class", "show", "dev", "lo"]);
            assert!(classes.contains("class htb 4e56:3"), "{classes}");
            // Adding the root again is the kernel's EEXIST, errno kept.
            let e = apply(index, &TcOp::AddRoot).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{e}");
            apply(index, &TcOp::DeleteFilter { prio: 3 }).unwrap();
            apply(index, &TcOp::DeleteClass { minor: 3 }).unwrap();
            apply(index, &TcOp::DeleteRoot).unwrap();
            assert!(!observe(name, index).unwrap().ours());
            assert!(!tc(&["qdisc", "show", "dev", "lo"]).contains("4e56"));
        })
        .join()
        .unwrap();
    }
}
