//! The tenant network context (TENANCY.md invariants 1 and 2): one network
//! namespace per tenant that has a TLS listener or a tenant-scope IPsec
//! tunnel. A tenant's TLS listeners are bound, and their upstream
//! connections made, inside it (`dpu_crypto::netns::NetnsThread`), so
//! loopback there is the tenant's own: the agent's API, OVSDB/OpenFlow and
//! SPDK sockets, and every address of the agent's namespace, are not in it.
//! It holds `lo` (up) and, on `lo`, each listener's `listen` address (/32 or
//! /128), nothing else.
//!
//! Naming and lifetime:
//! - **named** (`run` mode, or `dev` with `DPU_TENANT_NETNS_PREFIX` set):
//!   `/run/netns/<prefix><tenant>` (default prefix `dpu-tn-`), made natively
//!   by `net_offload::functions::netns` (unshare + bind mount, as `ip netns
//!   add`), so `ip netns exec` sees it. It outlives an agent restart and is
//!   found again by name; a sweep removes every `<prefix>*` namespace whose
//!   tenant no longer has a listener or tenant-scope tunnel (level-triggered:
//!   also the leftovers of a crash).
//! - **private** (`dev` mode by default): an unnamed namespace held only by
//!   the agent's file descriptor and sockets; it ends with the process, so
//!   trying the agent (or a test that kills it) leaves nothing on the host.
//!
//! A namespace is removed as soon as its tenant needs none; one that
//! disappears under the agent (someone ran `ip netns del`) is made again and
//! the listeners in it are restarted (they compare the namespace's inode).
//!
//! rtnetlink here is a few hand-built messages (`RTM_NEWLINK` lo up and the
//! XFRM interface, `RTM_NEWADDR`/`RTM_DELADDR` on lo, `RTM_NEWROUTE`), sent
//! from the namespace's own thread over the shared netlink layer
//! (`dpu-netlink`: socket, ack exchange, attribute writer).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use dpu_api::Kind;
use dpu_api::spec::{IpsecScope, Spec};
use dpu_crypto::netns::NetnsThread;
use net_offload::functions::netns;

use crate::store::Store;

/// Prefix of named tenant namespaces under `/run/netns`.
pub const DEFAULT_PREFIX: &str = "dpu-tn-";
/// The tenant's XFRM interface inside its namespace.
pub const XFRM_IFNAME: &str = "ipsec0";
/// Environment variable that sets the prefix (and, in `dev` mode, asks for
/// named namespaces instead of private ones).
pub const PREFIX_ENV: &str = "DPU_TENANT_NETNS_PREFIX";

#[derive(Debug, thiserror::Error)]
pub enum TenantNetnsError {
    #[error("tenant id {0:?} cannot name a network namespace")]
    BadTenant(String),
    #[error("cannot create network namespace {name} (the agent needs CAP_SYS_ADMIN)")]
    Create {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter network namespace {name}")]
    Enter {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("in network namespace {name}: {op} failed")]
    Configure {
        name: String,
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove network namespace {name}")]
    Remove {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// One tenant's namespace, open.
#[derive(Debug)]
pub struct TenantNetns {
    /// `dpu-tn-acme`, or `private:acme` for a private one.
    pub name: String,
    /// The thread that makes sockets in it.
    pub thread: Arc<NetnsThread>,
    /// Identity of the namespace (nsfs inode): a changed value means the
    /// namespace was replaced and sockets in the old one are elsewhere.
    pub inode: u64,
    /// Keeps a private namespace alive (and lets callers move devices in).
    pub file: File,
}

#[derive(Debug, Clone)]
enum Naming {
    Named { prefix: String },
    Private,
}

/// Every tenant namespace of this agent; shared by the TLS and IPsec
/// controllers (see `ipsec::with_configured`).
#[derive(Debug)]
pub struct TenantContexts {
    naming: Naming,
    open: tokio::sync::Mutex<BTreeMap<String, Arc<TenantNetns>>>,
    swept: std::sync::atomic::AtomicBool,
}

impl Default for TenantContexts {
    /// Private namespaces (nothing left behind on the host).
    fn default() -> Self {
        TenantContexts::private()
    }
}

impl TenantContexts {
    /// Named namespaces `/run/netns/<prefix><tenant>`.
    pub fn named(prefix: &str) -> Self {
        TenantContexts::with(Naming::Named {
            prefix: prefix.to_string(),
        })
    }

    /// Private namespaces that end with the agent.
    pub fn private() -> Self {
        TenantContexts::with(Naming::Private)
    }

    fn with(naming: Naming) -> Self {
        TenantContexts {
            naming,
            open: Default::default(),
            swept: Default::default(),
        }
    }

    /// For the agent's mode: named in `run` (prefix from
    /// [`PREFIX_ENV`], default [`DEFAULT_PREFIX`]); in `dev` private unless
    /// [`PREFIX_ENV`] is set.
    pub fn for_config(cfg: &crate::config::Config) -> Self {
        match (cfg.mode, std::env::var(PREFIX_ENV).ok()) {
            (_, Some(p)) if !p.is_empty() => TenantContexts::named(&p),
            (crate::config::Mode::Run, _) => TenantContexts::named(DEFAULT_PREFIX),
            (crate::config::Mode::Dev, _) => TenantContexts::private(),
        }
    }

    /// The namespace name for `tenant` (what `ip netns` shows when named).
    pub fn name_of(&self, tenant: &str) -> String {
        match &self.naming {
            Naming::Named { prefix } => format!("{prefix}{tenant}"),
            Naming::Private => format!("private:{tenant}"),
        }
    }

    fn check_tenant(tenant: &str) -> Result<(), TenantNetnsError> {
        let ok = !tenant.is_empty()
            && tenant.len() <= 200
            && tenant != "."
            && tenant != ".."
            && tenant
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            Ok(())
        } else {
            Err(TenantNetnsError::BadTenant(tenant.to_string()))
        }
    }

    /// `tenant`'s namespace, made (with `lo` up) if it does not exist yet.
    pub async fn ensure(
        &self,
        store: &Store,
        tenant: &str,
    ) -> Result<Arc<TenantNetns>, TenantNetnsError> {
        Self::check_tenant(tenant)?;
        let mut open = self.open.lock().await;
        if !self.swept.swap(true, std::sync::atomic::Ordering::Relaxed) {
            self.sweep_locked(&mut open, store, Some(tenant)).await;
        }
        let name = self.name_of(tenant);
        if let Some(have) = open.get(tenant) {
            let still_there = match &self.naming {
                Naming::Named { .. } => {
                    netns::exists(&name) && inode_of(&netns::path(&name)) == Some(have.inode)
                }
                Naming::Private => true,
            };
            if still_there {
                return Ok(have.clone());
            }
            open.remove(tenant);
        }
        let made = self.make(&name).await?;
        let made = Arc::new(made);
        open.insert(tenant.to_string(), made.clone());
        Ok(made)
    }

    async fn make(&self, name: &str) -> Result<TenantNetns, TenantNetnsError> {
        let naming = self.naming.clone();
        let n = name.to_string();
        let file = tokio::task::spawn_blocking(move || -> io::Result<File> {
            match naming {
                Naming::Named { .. } => {
                    netns::create(&n)?;
                    netns::open(&n)
                }
                Naming::Private => private_netns(),
            }
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r)
        .map_err(|source| TenantNetnsError::Create {
            name: name.to_string(),
            source,
        })?;
        let inode = file
            .metadata()
            .map(|m| m.ino())
            .map_err(|source| TenantNetnsError::Enter {
                name: name.to_string(),
                source,
            })?;
        let dup = file.try_clone().map_err(|source| TenantNetnsError::Enter {
            name: name.to_string(),
            source,
        })?;
        let thread = NetnsThread::spawn(name, dup).map_err(|source| TenantNetnsError::Enter {
            name: name.to_string(),
            source,
        })?;
        thread
            .run(rtnl::lo_up)
            .await
            .and_then(|r| r)
            .map_err(|source| TenantNetnsError::Configure {
                name: name.to_string(),
                op: "RTM_NEWLINK lo up".into(),
                source,
            })?;
        Ok(TenantNetns {
            name: name.to_string(),
            thread: Arc::new(thread),
            inode,
            file,
        })
    }

    /// Puts `ip` on `lo` in the namespace (/32 or /128), so a listener can
    /// bind it; loopback and unspecified addresses need nothing.
    pub async fn add_address(&self, ns: &TenantNetns, ip: IpAddr) -> Result<(), TenantNetnsError> {
        if ip.is_loopback() || ip.is_unspecified() {
            return Ok(());
        }
        ns.thread
            .run(move || rtnl::address(true, ip))
            .await
            .and_then(|r| r)
            .map_err(|source| TenantNetnsError::Configure {
                name: ns.name.clone(),
                op: format!("RTM_NEWADDR {ip} dev lo"),
                source,
            })
    }

    /// Takes `ip` off `lo` in `tenant`'s namespace, if it is open.
    pub async fn remove_address(&self, tenant: &str, ip: IpAddr) -> Result<(), TenantNetnsError> {
        if ip.is_loopback() || ip.is_unspecified() {
            return Ok(());
        }
        let Some(ns) = self.open.lock().await.get(tenant).cloned() else {
            return Ok(());
        };
        ns.thread
            .run(move || rtnl::address(false, ip))
            .await
            .and_then(|r| r)
            .map_err(|source| TenantNetnsError::Configure {
                name: ns.name.clone(),
                op: format!("RTM_DELADDR {ip} dev lo"),
                source,
            })
    }

    /// The tenant's XFRM interface, [`XFRM_IFNAME`] in its namespace: made
    /// (in the namespace whose XFRM database holds the tunnel's SAs —
    /// `xfrm_netns`, or the agent's own when `None` — with `if_id` and the
    /// uplink `link`, so its lookups stay in that database) and moved in,
    /// up, with a route to each of `routes` through it. Traffic the tenant
    /// sends to those routes enters the scoped policies; nothing else can.
    pub async fn ensure_xfrm_interface(
        &self,
        ns: &TenantNetns,
        xfrm_netns: Option<&std::path::Path>,
        link: u32,
        if_id: u32,
        routes: Vec<(std::net::Ipv4Addr, u8)>,
    ) -> Result<(), TenantNetnsError> {
        let fail = |op: String| {
            let name = ns.name.clone();
            move |source| TenantNetnsError::Configure { name, op, source }
        };
        let present = ns
            .thread
            .run(|| rtnl::link_index(XFRM_IFNAME).is_some())
            .await
            .map_err(fail("look up the XFRM interface".into()))?;
        if !present {
            let tmp = format!("dxi{if_id:08x}");
            let fd = ns
                .file
                .try_clone()
                .map_err(fail("open the namespace".into()))?;
            let job = move || -> io::Result<()> {
                let index = rtnl::create_xfrm_link(&tmp, link, if_id)?;
                rtnl::move_link(index, fd.as_raw_fd(), XFRM_IFNAME)
            };
            let op = format!(
                "RTM_NEWLINK {XFRM_IFNAME} type xfrm if_id 0x{if_id:08x} (moved in from the XFRM namespace)"
            );
            match xfrm_netns {
                None => tokio::task::spawn_blocking(job)
                    .await
                    .map_err(io::Error::other)
                    .and_then(|r| r),
                Some(path) => {
                    let there = File::open(path)
                        .and_then(|f| NetnsThread::spawn(&path.display().to_string(), f));
                    match there {
                        Ok(t) => t.run(job).await.and_then(|r| r),
                        Err(e) => Err(e),
                    }
                }
            }
            .map_err(fail(op))?;
        }
        ns.thread
            .run(move || -> io::Result<()> {
                rtnl::link_up(XFRM_IFNAME)?;
                for (dst, len) in routes {
                    rtnl::route_replace(dst, len, XFRM_IFNAME)?;
                }
                Ok(())
            })
            .await
            .and_then(|r| r)
            .map_err(fail(format!("{XFRM_IFNAME} up and its routes")))
    }

    /// Removes `tenant`'s namespace unless it still has a TLS listener or a
    /// tenant-scope tunnel (objects being deleted do not count), and sweeps
    /// leftovers of other tenants.
    pub async fn release_unless_needed(
        &self,
        store: &Store,
        tenant: &str,
    ) -> Result<(), TenantNetnsError> {
        let mut open = self.open.lock().await;
        if needed(store, tenant) {
            return Ok(());
        }
        open.remove(tenant);
        let name = self.name_of(tenant);
        if let Naming::Named { .. } = self.naming
            && Self::check_tenant(tenant).is_ok()
        {
            let n = name.clone();
            tokio::task::spawn_blocking(move || netns::remove(&n))
                .await
                .map_err(io::Error::other)
                .and_then(|r| r)
                .map_err(|source| TenantNetnsError::Remove { name, source })?;
        }
        self.sweep_locked(&mut open, store, None).await;
        Ok(())
    }

    /// Whether `tenant` has a namespace open now (for plans and tests).
    pub fn is_open(&self, tenant: &str) -> bool {
        self.open
            .try_lock()
            .map(|o| o.contains_key(tenant))
            .unwrap_or(false)
    }

    /// Drops namespaces (open or, when named, under `/run/netns` with our
    /// prefix) of tenants that need none. `keep` is never removed.
    async fn sweep_locked(
        &self,
        open: &mut BTreeMap<String, Arc<TenantNetns>>,
        store: &Store,
        keep: Option<&str>,
    ) {
        open.retain(|t, _| Some(t.as_str()) == keep || needed(store, t));
        let Naming::Named { prefix } = &self.naming else {
            return;
        };
        let Ok(names) = netns::list() else { return };
        for name in names {
            let Some(tenant) = name.strip_prefix(prefix.as_str()) else {
                continue;
            };
            if Some(tenant) == keep || open.contains_key(tenant) || needed(store, tenant) {
                continue;
            }
            let n = name.clone();
            match tokio::task::spawn_blocking(move || netns::remove(&n)).await {
                Ok(Ok(())) => {
                    tracing::info!(netns = %name, "removed a tenant namespace no object needs")
                }
                Ok(Err(e)) => {
                    tracing::warn!(netns = %name, error = %crate::error_chain(&e), "cannot remove a stale tenant namespace")
                }
                Err(_) => {}
            }
        }
    }
}

/// Whether `tenant` has a TLS listener or a tenant-scope IPsec tunnel that
/// is not being deleted.
pub fn needed(store: &Store, tenant: &str) -> bool {
    let live = |o: &&Arc<crate::store::StoredObject>| !o.deleting;
    if store
        .list(Kind::TlsListener, Some(tenant))
        .iter()
        .any(|o| live(&o))
    {
        return true;
    }
    store
        .list(Kind::IpsecTunnel, Some(tenant))
        .iter()
        .filter(live)
        .any(|o| match &o.spec {
            Spec::IpsecTunnel(s) => s.scope() == IpsecScope::Tenant,
            _ => false,
        })
}

fn inode_of(path: &std::path::Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// A new unnamed network namespace, held by the returned fd only.
fn private_netns() -> io::Result<File> {
    std::thread::spawn(|| {
        // SAFETY: unshare affects only this short-lived thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        File::open("/proc/thread-self/ns/net")
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
}

/// Minimal rtnetlink for the tenant namespace, run on its thread.
mod rtnl {
    use super::*;

    use dpu_netlink::attr::{put as attr, put_str, put_u32, put_with};
    use dpu_netlink::msg::{
        self, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
    };

    const RTM_NEWLINK: u16 = 16;
    const RTM_NEWADDR: u16 = 20;
    const RTM_DELADDR: u16 = 21;
    const IFA_ADDRESS: u16 = 1;
    const IFA_LOCAL: u16 = 2;

    fn lo_index() -> io::Result<u32> {
        // SAFETY: a valid NUL-terminated name.
        let idx = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        if idx == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(idx)
    }

    /// Sends one request on a fresh `NETLINK_ROUTE` socket of the calling
    /// thread's namespace (the shared `dpu-netlink` layer) and waits for its
    /// ack; the kernel's refusal keeps its errno.
    fn request(type_: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        let mut sock = dpu_netlink::Socket::open(dpu_netlink::NETLINK_ROUTE)?;
        let mut m = msg::message(type_, flags | NLM_F_REQUEST | NLM_F_ACK, 0, body);
        Ok(sock.ack(&mut m)?)
    }

    /// `ip link set lo up`.
    pub fn lo_up() -> io::Result<()> {
        let mut b = Vec::with_capacity(16);
        b.push(0u8); // ifi_family
        b.push(0u8);
        b.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
        b.extend_from_slice(&(lo_index()? as i32).to_ne_bytes());
        b.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes()); // flags
        b.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes()); // change
        request(RTM_NEWLINK, 0, &b)
    }

    /// `ip addr add|del IP/32 (or /128) dev lo`; adding an address that is
    /// there, or deleting one that is not, is done.
    pub fn address(add: bool, ip: IpAddr) -> io::Result<()> {
        let (family, prefix, bytes): (u8, u8, Vec<u8>) = match ip {
            IpAddr::V4(a) => (libc::AF_INET as u8, 32, a.octets().to_vec()),
            IpAddr::V6(a) => (libc::AF_INET6 as u8, 128, a.octets().to_vec()),
        };
        let mut b = vec![family, prefix, 0, 0];
        b.extend_from_slice(&lo_index()?.to_ne_bytes());
        attr(&mut b, IFA_LOCAL, &bytes);
        attr(&mut b, IFA_ADDRESS, &bytes);
        let r = if add {
            request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &b)
        } else {
            request(RTM_DELADDR, 0, &b)
        };
        match r {
            Err(e) if add && e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) if !add && e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            r => r,
        }
    }

    const RTM_NEWROUTE: u16 = 24;
    const IFLA_IFNAME: u16 = 3;
    const IFLA_LINKINFO: u16 = 18;
    const IFLA_NET_NS_FD: u16 = 28;
    const IFLA_INFO_KIND: u16 = 1;
    const IFLA_INFO_DATA: u16 = 2;
    const IFLA_XFRM_LINK: u16 = 1;
    const IFLA_XFRM_IF_ID: u16 = 2;
    const RTA_DST: u16 = 1;
    const RTA_OIF: u16 = 4;

    /// `ifinfomsg` for `index` (0: a new link), no flag changes.
    fn ifinfo(index: u32) -> Vec<u8> {
        let mut b = vec![0u8, 0];
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&(index as i32).to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b
    }

    fn ifname(b: &mut Vec<u8>, name: &str) {
        put_str(b, IFLA_IFNAME, name);
    }

    /// The body of `ip link add NAME type xfrm dev LINK if_id IF_ID`
    /// (`RTM_NEWLINK`), as iproute2 6.1 encodes it.
    pub fn xfrm_link_body(name: &str, link: u32, if_id: u32) -> Vec<u8> {
        let mut b = ifinfo(0);
        ifname(&mut b, name);
        // Nests without NLA_F_NESTED, as iproute2 writes them.
        put_with(&mut b, IFLA_LINKINFO, |info| {
            attr(info, IFLA_INFO_KIND, b"xfrm");
            put_with(info, IFLA_INFO_DATA, |data| {
                put_u32(data, IFLA_XFRM_IF_ID, if_id);
                put_u32(data, IFLA_XFRM_LINK, link);
            });
        });
        b
    }

    pub fn link_index(name: &str) -> Option<u32> {
        let c = std::ffi::CString::new(name).ok()?;
        // SAFETY: a valid NUL-terminated name.
        let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
        (idx != 0).then_some(idx)
    }

    /// Creates an XFRM interface in the calling thread's namespace (or
    /// finds the one a previous attempt left) and returns its index.
    pub fn create_xfrm_link(name: &str, link: u32, if_id: u32) -> io::Result<u32> {
        if let Some(i) = link_index(name) {
            return Ok(i);
        }
        request(
            RTM_NEWLINK,
            NLM_F_CREATE | NLM_F_EXCL,
            &xfrm_link_body(name, link, if_id),
        )?;
        link_index(name).ok_or_else(|| io::Error::other("the new XFRM interface has no index"))
    }

    /// Moves link `index` into the namespace of `ns_fd`, renamed `name`.
    pub fn move_link(index: u32, ns_fd: i32, name: &str) -> io::Result<()> {
        let mut b = ifinfo(index);
        put_u32(&mut b, IFLA_NET_NS_FD, ns_fd as u32);
        ifname(&mut b, name);
        request(RTM_NEWLINK, 0, &b)
    }

    /// `ip link set NAME up`.
    pub fn link_up(name: &str) -> io::Result<()> {
        let index = link_index(name).ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
        let mut b = ifinfo(index);
        b[8..12].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        b[12..16].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        request(RTM_NEWLINK, 0, &b)
    }

    /// `ip route replace DST/LEN dev NAME` (main table, scope link).
    pub fn route_replace(dst: std::net::Ipv4Addr, len: u8, name: &str) -> io::Result<()> {
        let index = link_index(name).ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
        // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let mut b = vec![libc::AF_INET as u8, len, 0, 0, 254, 4, 253, 1];
        b.extend_from_slice(&0u32.to_ne_bytes());
        attr(&mut b, RTA_DST, &dst.octets());
        put_u32(&mut b, RTA_OIF, index);
        request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &b)
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use dpu_api::object::EventType;
    use serde_json::json;

    use super::*;
    use crate::store::{StoreError, StoredObject};

    fn put(store: &Store, kind: Kind, id: &str, spec: serde_json::Value, deleting: bool) {
        store
            .transact(|t| {
                let mut o = StoredObject::from_json(None, kind, id, "acme", &spec);
                o.deleting = deleting;
                t.put(o, EventType::Added);
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }

    /// `ip link add dxi0d520001 type xfrm dev lo if_id 0x0d520001` as
    /// iproute2 6.1 sends it (`strace -xx`; this machine's kernel then
    /// refuses it: no CONFIG_XFRM_INTERFACE), after the 16-byte header:
    /// `IFLA_XFRM_IF_ID` before `IFLA_XFRM_LINK`, the kind without a NUL.
    const IPROUTE_XFRM_LINK_BODY: &str = "000000000000000000000000000000001000030064786930643532303030310020001200080001007866726d14000200080002000100520d0800010001000000";

    #[test]
    fn xfrm_link_matches_iproute2_bytes() {
        let body = rtnl::xfrm_link_body("dxi0d520001", 1, 0x0d52_0001);
        assert_eq!(hex::encode(&body), IPROUTE_XFRM_LINK_BODY);
    }

    /// Root only. A named context is made with `lo` up and an address, is
    /// found again by a fresh registry (an agent restart), and is removed
    /// when its tenant has nothing left — also by the sweep of a registry
    /// that never opened it.
    #[tokio::test]
    async fn named_context_lives_exactly_as_long_as_the_tenant_needs_it() {
        // A missing environment fails the test; it never passes unrun.
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "needs root: run the tests as root (scripts/test.sh does)"
        );
        let prefix = format!("dpuag-tn{}-", std::process::id());
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let listener = json!({"listen": "10.9.0.10:443", "upstream": "10.9.0.11:80",
            "certificate_pem": "x", "private_key_pem": "y", "ktls": "off"});
        put(&store, Kind::TlsListener, "web", listener.clone(), false);
        let ctxs = TenantContexts::named(&prefix);
        let ns = ctxs.ensure(&store, "acme").await.unwrap();
        let name = format!("{prefix}acme");
        assert_eq!(ns.name, name);
        ctxs.add_address(&ns, "10.9.0.10".parse().unwrap())
            .await
            .unwrap();
        let shown = Command::new("ip")
            .args(["-n", &name, "addr", "show", "dev", "lo"])
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&shown.stdout);
        assert!(shown.contains("10.9.0.10/32"), "{shown}");
        assert!(shown.contains("UP"), "{shown}");

        // A restart: a new registry finds the same namespace.
        drop(ns);
        let again = TenantContexts::named(&prefix);
        let ns2 = again.ensure(&store, "acme").await.unwrap();
        assert_eq!(ns2.inode, inode_of(&netns::path(&name)).unwrap());
        drop(ns2);

        // Still needed: kept. Then deleted: gone, even for the registry
        // that never opened it (the sweep).
        ctxs.release_unless_needed(&store, "acme").await.unwrap();
        assert!(netns::exists(&name));
        put(&store, Kind::TlsListener, "web", listener, true);
        let third = TenantContexts::named(&prefix);
        third.release_unless_needed(&store, "other").await.unwrap();
        assert!(!netns::exists(&name), "{name} leaked");
        let _ = netns::remove(&name);
    }
}
