//! rtnetlink for what the function backends need: one `NETLINK_ROUTE`
//! socket per operation batch (the shared `dpu-netlink` layer: socket,
//! request / ack / dump exchange with sequence matching), links by name,
//! addresses, and errors as `io::Error` with the kernel's errno kept. The
//! message types are `netlink-packet-route`'s, serialized into our buffer
//! and read back from the payloads the exchange hands over.
//!
//! Requests run inline on the calling task (the methods stay `async` for
//! their callers): the kernel handles an rtnetlink request inside the
//! sender's `sendmsg` and builds dump parts inside `recvmsg`, so nothing
//! waits on another party; each exchange is bounded by [`RTNL_TIMEOUT`].
//! The socket lives in the network namespace of the thread that connected
//! (the veth backend connects on a thread inside the switch's or the
//! function's namespace).

use std::io;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use dpu_netlink::msg::{self, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};
use dpu_netlink::{NETLINK_ROUTE, Socket};
use netlink_packet_core::{NetlinkDeserializable, NetlinkHeader, NetlinkMessage};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::FunctionsError;

/// How long one exchange may take before it fails with `TimedOut`.
pub(crate) const RTNL_TIMEOUT: Duration = Duration::from_secs(10);

/// A netlink route socket in the calling thread's network namespace.
pub(crate) struct Rtnl {
    sock: Mutex<Socket>,
}

/// One link as the agent cares about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub index: u32,
    pub name: String,
    pub alias: Option<String>,
    pub address: Vec<u8>,
    pub up: bool,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            alias: None,
            address: Vec::new(),
            up: msg.header.flags.contains(LinkFlags::Up),
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
                LinkAttribute::Address(a) => link.address = a.clone(),
                _ => {}
            }
        }
        link
    }
}

/// A link change of link `index` (`ip link set`): no flags changed unless
/// [`link_up`] says so.
pub(crate) fn link_change(index: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m
}

/// Sets the up flag in a link change (`ip link set DEV up`).
pub(crate) fn link_up(mut m: LinkMessage) -> LinkMessage {
    m.header.flags |= LinkFlags::Up;
    m.header.change_mask |= LinkFlags::Up;
    m
}

/// `ip link add NAME type veth peer PEER netns NS_FD [address MAC]`: the
/// peer's name, namespace and MAC in `IFLA_INFO_DATA` / `VETH_INFO_PEER`.
pub(crate) fn veth_pair(
    name: &str,
    peer: &str,
    peer_ns_fd: i32,
    peer_mac: Option<[u8; 6]>,
) -> LinkMessage {
    let mut p = LinkMessage::default();
    p.attributes.push(LinkAttribute::IfName(peer.to_string()));
    p.attributes.push(LinkAttribute::NetNsFd(peer_ns_fd));
    if let Some(mac) = peer_mac {
        p.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
    ]));
    m
}

/// A request as bytes: `msg` with `flags`, its length filled in (the
/// socket numbers it).
fn encode(msg: RouteNetlinkMessage, flags: u16) -> Vec<u8> {
    let mut m = NetlinkMessage::from(msg);
    m.header.flags = flags;
    m.finalize();
    serialize(&m)
}

fn serialize(m: &NetlinkMessage<RouteNetlinkMessage>) -> Vec<u8> {
    let mut buf = vec![0; m.buffer_len()];
    m.serialize(&mut buf);
    buf
}

/// One message's payload read by `netlink-packet-route`; `None` when it
/// does not decode (skipped, as `rtnetlink`'s connection did).
fn decode_payload(h: &msg::Header, payload: &[u8]) -> Option<RouteNetlinkMessage> {
    let mut header = NetlinkHeader::default();
    header.length = h.len;
    header.message_type = h.ty;
    header.flags = h.flags;
    header.sequence_number = h.seq;
    header.port_number = h.pid;
    RouteNetlinkMessage::deserialize(&header, payload).ok()
}

/// Runs one rtnetlink operation, timed in [`crate::timing`] as backend
/// `rtnetlink`.
fn timed<T>(operation: &'static str, f: impl FnOnce() -> T) -> T {
    crate::timing::time("rtnetlink", operation, f)
}

fn is_errno(e: &io::Error, errno: i32) -> bool {
    e.raw_os_error() == Some(errno)
}

impl Rtnl {
    /// Opens a route socket in the current thread's namespace.
    pub fn connect() -> Result<Rtnl, FunctionsError> {
        let sock = Socket::open(NETLINK_ROUTE)
            .map_err(|e| FunctionsError::netlink("open a route socket", e.into()))?
            .with_timeout(Some(RTNL_TIMEOUT));
        Ok(Rtnl {
            sock: Mutex::new(sock),
        })
    }

    /// Sends the request `bytes` and returns the decoded answers.
    fn exchange(&self, mut bytes: Vec<u8>) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        sock.exchange(&mut bytes, |h, payload| {
            out.extend(decode_payload(h, payload));
            Ok::<(), dpu_netlink::Error>(())
        })?;
        Ok(out)
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, FunctionsError> {
        timed("getlink", || self.link_by_name_untimed(name))
    }

    fn link_by_name_untimed(&self, name: &str) -> Result<Option<Link>, FunctionsError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.exchange(encode(RouteNetlinkMessage::GetLink(m), NLM_F_REQUEST)) {
            Ok(msgs) => Ok(msgs.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(FunctionsError::netlink(format!("RTM_GETLINK {name}"), e)),
        }
    }

    /// The link messages of a dump (`RTM_GETLINK`), with `attrs` in the
    /// request (e.g. `IFLA_EXT_MASK`).
    fn link_dump(&self, request: LinkMessage) -> io::Result<Vec<LinkMessage>> {
        Ok(self
            .exchange(encode(
                RouteNetlinkMessage::GetLink(request),
                NLM_F_REQUEST | NLM_F_DUMP,
            ))?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    pub async fn links(&self) -> Result<Vec<Link>, FunctionsError> {
        timed("getlink_dump", || {
            let msgs = self
                .link_dump(LinkMessage::default())
                .map_err(|e| FunctionsError::netlink("RTM_GETLINK dump", e))?;
            Ok(msgs.iter().map(Link::from_message).collect())
        })
    }

    /// The link message of `name` as a non-dump `RTM_GETLINK` with `attrs`
    /// added to the request (e.g. `IFLA_EXT_MASK` for the VFs).
    pub async fn link_messages(
        &self,
        name: &str,
        attrs: Vec<LinkAttribute>,
    ) -> Result<Vec<LinkMessage>, FunctionsError> {
        timed("getlink", || {
            let mut m = LinkMessage::default();
            m.attributes.push(LinkAttribute::IfName(name.to_string()));
            m.attributes.extend(attrs);
            Ok(self
                .exchange(encode(RouteNetlinkMessage::GetLink(m), NLM_F_REQUEST))
                .map_err(|e| FunctionsError::netlink(format!("RTM_GETLINK {name}"), e))?
                .into_iter()
                .filter_map(|m| match m {
                    RouteNetlinkMessage::NewLink(l) => Some(l),
                    _ => None,
                })
                .collect())
        })
    }

    pub async fn set(&self, op: &str, msg: LinkMessage) -> Result<(), FunctionsError> {
        timed("setlink", || {
            self.exchange(encode(
                RouteNetlinkMessage::SetLink(msg),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE,
            ))
            .map(drop)
            .map_err(|e| FunctionsError::netlink(op, e))
        })
    }

    pub async fn add(&self, op: &str, msg: LinkMessage) -> Result<(), FunctionsError> {
        timed("newlink", || {
            self.exchange(encode(
                RouteNetlinkMessage::NewLink(msg),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            ))
            .map(drop)
            .map_err(|e| FunctionsError::netlink(op, e))
        })
    }

    /// Deletes a link by index; a link already gone is not an error.
    pub async fn del(&self, op: &str, index: u32) -> Result<(), FunctionsError> {
        timed("dellink", || {
            match self.exchange(encode(
                RouteNetlinkMessage::DelLink(link_change(index)),
                NLM_F_REQUEST | NLM_F_ACK,
            )) {
                Err(e) if !is_errno(&e, libc::ENODEV) => Err(FunctionsError::netlink(op, e)),
                _ => Ok(()),
            }
        })
    }

    /// Sends one request as built (flags included) and waits for its ack.
    pub async fn request(
        &self,
        op: &str,
        msg: NetlinkMessage<RouteNetlinkMessage>,
    ) -> Result<(), FunctionsError> {
        timed("request", || {
            self.exchange(serialize(&msg))
                .map(drop)
                .map_err(|e| FunctionsError::netlink(op, e))
        })
    }

    /// Brings a link up and sets its alias (and MAC when given).
    pub async fn configure(
        &self,
        link: &Link,
        alias: &str,
        mac: Option<[u8; 6]>,
    ) -> Result<(), FunctionsError> {
        let mut m = link_up(link_change(link.index));
        if link.alias.as_deref() != Some(alias) {
            m.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
        }
        if let Some(mac) = mac
            && link.address != mac
        {
            m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        self.set(&format!("RTM_SETLINK {} up", link.name), m).await
    }

    /// The addresses on link `index` (a dump of all, filtered here).
    pub async fn addresses(&self, index: u32) -> Result<Vec<AddressMessage>, FunctionsError> {
        timed("getaddr", || {
            Ok(self
                .exchange(encode(
                    RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                    NLM_F_REQUEST | NLM_F_DUMP,
                ))
                .map_err(|e| FunctionsError::netlink("RTM_GETADDR", e))?
                .into_iter()
                .filter_map(|m| match m {
                    RouteNetlinkMessage::NewAddress(a) if a.header.index == index => Some(a),
                    _ => None,
                })
                .collect())
        })
    }

    /// `ip addr add IP/PREFIX dev INDEX` (with the IPv4 broadcast address
    /// below /31, as `rtnetlink` did); an address already there is done.
    pub async fn add_address(
        &self,
        index: u32,
        ip: IpAddr,
        prefix: u8,
    ) -> Result<(), FunctionsError> {
        timed("newaddr", || {
            match self.exchange(encode(
                RouteNetlinkMessage::NewAddress(address_message(index, ip, prefix)),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE,
            )) {
                Err(e) if !is_errno(&e, libc::EEXIST) => Err(FunctionsError::netlink(
                    format!("RTM_NEWADDR {ip}/{prefix}"),
                    e,
                )),
                _ => Ok(()),
            }
        })
    }

    /// Deletes an address as dumped; one already gone is done.
    pub async fn del_address(&self, msg: AddressMessage) -> Result<(), FunctionsError> {
        timed("deladdr", || {
            let what = address_of(&msg)
                .map(|ip| ip.to_string())
                .unwrap_or_default();
            match self.exchange(encode(
                RouteNetlinkMessage::DelAddress(msg),
                NLM_F_REQUEST | NLM_F_ACK,
            )) {
                Err(e) if !is_errno(&e, libc::EADDRNOTAVAIL) => {
                    Err(FunctionsError::netlink(format!("RTM_DELADDR {what}"), e))
                }
                _ => Ok(()),
            }
        })
    }
}

/// The `RTM_NEWADDR` body for `ip/prefix` on link `index`: `IFA_ADDRESS`
/// and `IFA_LOCAL`, and `IFA_BROADCAST` for IPv4 below /31.
fn address_message(index: u32, ip: IpAddr, prefix: u8) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.index = index;
    m.header.prefix_len = prefix;
    match ip {
        IpAddr::V4(v4) => {
            m.header.family = AddressFamily::Inet;
            if !v4.is_multicast() {
                m.attributes.push(AddressAttribute::Address(ip));
                m.attributes.push(AddressAttribute::Local(ip));
                if prefix < 31 {
                    let brd = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0) | u32::from(v4);
                    m.attributes
                        .push(AddressAttribute::Broadcast(std::net::Ipv4Addr::from(brd)));
                }
            }
        }
        IpAddr::V6(v6) => {
            m.header.family = AddressFamily::Inet6;
            if v6.is_multicast() {
                m.attributes.push(AddressAttribute::Multicast(v6));
            } else {
                m.attributes.push(AddressAttribute::Address(ip));
                m.attributes.push(AddressAttribute::Local(ip));
            }
        }
    }
    m
}

/// The local address of an address message.
pub(crate) fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    let mut found = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => return Some(*ip),
            AddressAttribute::Address(ip) => found = Some(*ip),
            _ => {}
        }
    }
    found
}

/// What the function backends read from one datagram of rtnetlink replies,
/// one line per fact: each message split off by the shared netlink layer
/// (`dpu_netlink::msg::messages`: a length that does not fit ends the
/// datagram), decoded by `netlink-packet-route` (a message that does not
/// decode is skipped) or, for `NLMSG_ERROR`, by `dpu_netlink::msg::error_of`,
/// then read by the backends' own code: a link's index, name, alias (and
/// the function it names), MAC and up flag, its VFs' states, an address's
/// IP. Pure; for the fuzz target `route_replies`.
pub fn decode_route_datagram(bytes: &[u8]) -> Vec<String> {
    let mut facts = Vec::new();
    for m in msg::messages(bytes) {
        let Ok((h, payload)) = m else {
            break;
        };
        if h.ty == msg::NLMSG_ERROR {
            facts.push(match msg::error_of(payload) {
                Ok(()) => "ack".to_string(),
                Err(e) => format!("error {:?}", e.errno()),
            });
            continue;
        }
        match decode_payload(&h, payload) {
            Some(RouteNetlinkMessage::NewLink(link)) => {
                let l = Link::from_message(&link);
                let owner = l.alias.as_deref().and_then(super::naming::parse_alias);
                facts.push(format!(
                    "link {} {:?} alias {:?} owner {owner:?} address {:02x?} up {}",
                    l.index, l.name, l.alias, l.address, l.up
                ));
                for attr in &link.attributes {
                    if let LinkAttribute::VfInfoList(list) = attr {
                        facts.extend(
                            list.iter()
                                .filter_map(super::sriov::vf_state)
                                .map(|vf| format!("vf {vf:?}")),
                        );
                    }
                }
            }
            Some(RouteNetlinkMessage::NewAddress(addr)) => {
                facts.push(format!("address {:?}", address_of(&addr)));
            }
            _ => {}
        }
    }
    facts
}

/// `NLM_F_REQUEST | NLM_F_ACK`, what iproute2 uses for `ip link set`.
pub(crate) const SET_FLAGS: u16 = NLM_F_REQUEST | NLM_F_ACK;

#[cfg(test)]
mod tests {
    use super::*;

    /// A link dump on the test's own route socket is timed under
    /// `rtnetlink`/`getlink_dump` (no root needed to read links).
    #[tokio::test]
    async fn operations_are_timed() {
        let r = Rtnl::connect().unwrap();
        let links = r.links().await.unwrap();
        assert!(links.iter().any(|l| l.name == "lo"), "{links:?}");
        assert!(r.link_by_name("lo").await.unwrap().is_some());
        assert_eq!(r.link_by_name("nosuchlink0").await.unwrap(), None);
        let snap = crate::timing::snapshot();
        let (_, _, s) = snap
            .iter()
            .find(|(b, o, _)| *b == "rtnetlink" && *o == "getlink_dump")
            .expect("timed");
        assert!(s.counts.iter().sum::<u64>() >= 1);
    }

    /// The messages `rtnetlink`'s builders made, byte for byte: a link
    /// change up with an alias, and an IPv4 address with its broadcast.
    #[test]
    fn messages_as_rtnetlink_built_them() {
        let mut up = link_up(link_change(7));
        up.attributes.push(LinkAttribute::IfAlias("a".into()));
        let b = encode(RouteNetlinkMessage::SetLink(up), SET_FLAGS);
        // nlmsghdr: RTM_SETLINK (19), REQUEST|ACK; ifinfomsg: index 7,
        // flags IFF_UP, change IFF_UP; IFLA_IFALIAS (20) "a".
        assert_eq!(&b[4..8], &[19, 0, 5, 0]);
        assert_eq!(&b[20..32], &[7, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&b[32..], &[6, 0, 20, 0, b'a', 0, 0, 0]);
        let a = address_message(3, "10.0.0.2".parse().unwrap(), 24);
        assert_eq!(
            a.attributes,
            vec![
                AddressAttribute::Address("10.0.0.2".parse().unwrap()),
                AddressAttribute::Local("10.0.0.2".parse().unwrap()),
                AddressAttribute::Broadcast("10.0.0.255".parse().unwrap()),
            ]
        );
        assert_eq!(
            address_message(3, "10.0.0.2".parse().unwrap(), 32)
                .attributes
                .len(),
            2
        );
        assert_eq!(
            address_message(3, "10.0.0.2".parse().unwrap(), 0)
                .attributes
                .len(),
            3
        );
    }
}
