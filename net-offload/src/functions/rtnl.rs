//! A small wrapper over `rtnetlink` for what the function backends need:
//! one connection per operation batch, links by name, addresses, and errors
//! as `io::Error` with the kernel's errno kept.

use std::io;
use std::net::IpAddr;

use futures_util::TryStreamExt;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkBuffer, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};

use super::FunctionsError;

/// A netlink route connection in the calling thread's network namespace.
pub(crate) struct Rtnl {
    pub handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Rtnl {
    fn drop(&mut self) {
        self.task.abort();
    }
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

pub(crate) fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

/// Runs one rtnetlink operation, timed in [`crate::timing`] as backend
/// `rtnetlink`.
async fn timed<T>(operation: &'static str, f: impl std::future::Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let out = f.await;
    crate::timing::observe("rtnetlink", operation, started.elapsed().as_secs_f64());
    out
}

fn is_errno(e: &io::Error, errno: i32) -> bool {
    e.raw_os_error() == Some(errno)
}

impl Rtnl {
    /// Connects in the current thread's namespace; needs a tokio runtime.
    pub fn connect() -> Result<Rtnl, FunctionsError> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| FunctionsError::netlink("open a route socket", e))?;
        let task = tokio::spawn(conn);
        Ok(Rtnl { handle, task })
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, FunctionsError> {
        timed("getlink", self.link_by_name_untimed(name)).await
    }

    async fn link_by_name_untimed(&self, name: &str) -> Result<Option<Link>, FunctionsError> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Some(Link::from_message(&msg))),
            Ok(None) => Ok(None),
            Err(e) => {
                let e = to_io(e);
                if is_errno(&e, libc::ENODEV) {
                    Ok(None)
                } else {
                    Err(FunctionsError::netlink(format!("RTM_GETLINK {name}"), e))
                }
            }
        }
    }

    pub async fn links(&self) -> Result<Vec<Link>, FunctionsError> {
        timed("getlink_dump", self.links_untimed()).await
    }

    async fn links_untimed(&self) -> Result<Vec<Link>, FunctionsError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| FunctionsError::netlink("RTM_GETLINK dump", to_io(e)))?;
        Ok(msgs.iter().map(Link::from_message).collect())
    }

    pub async fn set(&self, op: &str, msg: LinkMessage) -> Result<(), FunctionsError> {
        timed("setlink", self.set_untimed(op, msg)).await
    }

    async fn set_untimed(&self, op: &str, msg: LinkMessage) -> Result<(), FunctionsError> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| FunctionsError::netlink(op, to_io(e)))
    }

    pub async fn add(&self, op: &str, msg: LinkMessage) -> Result<(), FunctionsError> {
        timed("newlink", self.add_untimed(op, msg)).await
    }

    async fn add_untimed(&self, op: &str, msg: LinkMessage) -> Result<(), FunctionsError> {
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| FunctionsError::netlink(op, to_io(e)))
    }

    /// Deletes a link by index; a link already gone is not an error.
    pub async fn del(&self, op: &str, index: u32) -> Result<(), FunctionsError> {
        timed("dellink", self.del_untimed(op, index)).await
    }

    async fn del_untimed(&self, op: &str, index: u32) -> Result<(), FunctionsError> {
        match self.handle.link().del(index).execute().await.map_err(to_io) {
            Err(e) if !is_errno(&e, libc::ENODEV) => Err(FunctionsError::netlink(op, e)),
            _ => Ok(()),
        }
    }

    /// Sends one request as built (flags included) and waits for its ack.
    pub async fn request(
        &self,
        op: &str,
        msg: NetlinkMessage<RouteNetlinkMessage>,
    ) -> Result<(), FunctionsError> {
        timed("request", self.request_untimed(op, msg)).await
    }

    async fn request_untimed(
        &self,
        op: &str,
        msg: NetlinkMessage<RouteNetlinkMessage>,
    ) -> Result<(), FunctionsError> {
        let mut handle = self.handle.clone();
        let mut replies = handle
            .request(msg)
            .map_err(|e| FunctionsError::netlink(op, to_io(e)))?;
        use futures_util::StreamExt;
        while let Some(reply) = replies.next().await {
            if let NetlinkPayload::Error(e) = reply.payload
                && e.code.is_some()
            {
                return Err(FunctionsError::netlink(op, e.to_io()));
            }
        }
        Ok(())
    }

    /// Brings a link up and sets its alias (and MAC when given).
    pub async fn configure(
        &self,
        link: &Link,
        alias: &str,
        mac: Option<[u8; 6]>,
    ) -> Result<(), FunctionsError> {
        let mut b = LinkUnspec::new_with_index(link.index).up();
        if link.alias.as_deref() != Some(alias) {
            b = b.alias(alias);
        }
        if let Some(mac) = mac
            && link.address != mac
        {
            b = b.address(mac.to_vec());
        }
        self.set(&format!("RTM_SETLINK {} up", link.name), b.build())
            .await
    }

    pub async fn addresses(&self, index: u32) -> Result<Vec<AddressMessage>, FunctionsError> {
        timed("getaddr", self.addresses_untimed(index)).await
    }

    async fn addresses_untimed(&self, index: u32) -> Result<Vec<AddressMessage>, FunctionsError> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| FunctionsError::netlink("RTM_GETADDR", to_io(e)))
    }

    pub async fn add_address(
        &self,
        index: u32,
        ip: IpAddr,
        prefix: u8,
    ) -> Result<(), FunctionsError> {
        timed("newaddr", self.add_address_untimed(index, ip, prefix)).await
    }

    async fn add_address_untimed(
        &self,
        index: u32,
        ip: IpAddr,
        prefix: u8,
    ) -> Result<(), FunctionsError> {
        match self
            .handle
            .address()
            .add(index, ip, prefix)
            .execute()
            .await
            .map_err(to_io)
        {
            Err(e) if !is_errno(&e, libc::EEXIST) => Err(FunctionsError::netlink(
                format!("RTM_NEWADDR {ip}/{prefix}"),
                e,
            )),
            _ => Ok(()),
        }
    }

    pub async fn del_address(&self, msg: AddressMessage) -> Result<(), FunctionsError> {
        timed("deladdr", self.del_address_untimed(msg)).await
    }

    async fn del_address_untimed(&self, msg: AddressMessage) -> Result<(), FunctionsError> {
        let what = address_of(&msg)
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        match self
            .handle
            .address()
            .del(msg)
            .execute()
            .await
            .map_err(to_io)
        {
            Err(e) if !is_errno(&e, libc::EADDRNOTAVAIL) => {
                Err(FunctionsError::netlink(format!("RTM_DELADDR {what}"), e))
            }
            _ => Ok(()),
        }
    }
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
/// one line per fact: each message split off and decoded as `rtnetlink`'s
/// connection does (by the header's length; a message that does not decode
/// is skipped, a length that does not fit ends the datagram), then read by
/// the backends' own code: a link's index, name, alias (and the function it
/// names), MAC and up flag, its VFs' states, an address's IP. Pure; for the
/// fuzz target `route_replies`.
pub fn decode_route_datagram(bytes: &[u8]) -> Vec<String> {
    let mut facts = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Ok(header) = NetlinkBuffer::new_checked(rest) else {
            break;
        };
        let (msg, tail) = rest.split_at(header.length() as usize);
        rest = tail;
        let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(msg) else {
            continue;
        };
        match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
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
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(addr)) => {
                facts.push(format!("address {:?}", address_of(&addr)));
            }
            NetlinkPayload::Error(e) => facts.push(format!("error {:?}", e.code)),
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
        let snap = crate::timing::snapshot();
        let (_, _, s) = snap
            .iter()
            .find(|(b, o, _)| *b == "rtnetlink" && *o == "getlink_dump")
            .expect("timed");
        assert!(s.counts.iter().sum::<u64>() >= 1);
    }
}
