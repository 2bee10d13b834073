//! The simulator backend, for hosts without a DPU (`dpu-agent dev`).
//!
//! Per net function it makes a veth pair:
//! - the representor end, named by [`naming::veth_representor`]
//!   (`fn-<id>`), stays in the agent's namespace, up, for the network
//!   pipeline to put on the bridge — or, with
//!   [`VethBackend::in_switch_netns`], in the named namespace ovs-vswitchd
//!   runs in (a second `dpu-agent dev` on one host), where it is also
//!   observed and removed;
//! - the other end is created directly inside the namespace
//!   `dpu-fn-<id>` (one `RTM_NEWLINK` with the peer's `IFLA_NET_NS_FD`,
//!   equivalent to creating it here, moving it there and renaming it) as
//!   `eth0`, with the function's MAC.
//!
//! It also plays the tenant: with the attached port's MAC and addresses it
//! sets them on `eth0` and brings `eth0` and `lo` up, so a demo can ping;
//! without a port `eth0` keeps the function's MAC and no address. Both ends
//! carry the ifalias `dpu-agent function <id>`. nvme and virtio-blk functions
//! are not simulated: [`Applied::Unsupported`].

use std::net::IpAddr;

use super::rtnl::{Rtnl, address_of, link_change, link_up, veth_pair};
use super::{
    Applied, BoxFuture, ExecuteFuture, FunctionAction, FunctionBackend, FunctionDesired,
    FunctionType, FunctionsError, Mac, ObservedFunction, Slot, TenantAddressing, UnsupportedReason,
    VethPair, foreign_action, naming, netns,
};

pub use super::plan::TENANT_IFNAME;

#[derive(Debug, Clone, Default)]
pub struct VethBackend {
    /// Written into every alias; `observe` reports only this scope's links
    /// (and their namespaces), so agents sharing a host never sweep each
    /// other's functions. `None`: unscoped, sees every agent's.
    scope: Option<String>,
    /// The named namespace (`/run/netns/<name>`) the switch runs in, where
    /// representors are made, observed and removed. `None`: the caller's.
    switch_netns: Option<String>,
}

impl VethBackend {
    /// An unscoped backend (one agent per host).
    pub fn new() -> Self {
        VethBackend::default()
    }

    /// A backend whose links carry `scope` (see [`naming::scope_of`]).
    pub fn scoped(scope: impl Into<String>) -> Self {
        VethBackend {
            scope: Some(scope.into()),
            switch_netns: None,
        }
    }

    /// Makes, observes and removes representors inside the named namespace
    /// `netns` (the one the switch's ovs-vswitchd runs in) instead of the
    /// caller's; the tenant ends stay in the functions' own namespaces.
    pub fn in_switch_netns(mut self, netns: Option<String>) -> Self {
        self.switch_netns = netns;
        self
    }

    /// Runs `f` in the switch's namespace (on a thread of its own there),
    /// or right here when the switch runs in the caller's.
    async fn in_switch<T, F, Fut>(&self, f: F) -> Result<T, FunctionsError>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, FunctionsError>>,
    {
        match &self.switch_netns {
            None => f().await,
            Some(sw) => netns::run_in(sw, f)
                .await
                .map_err(netns_error(sw, "enter"))?,
        }
    }

    fn alias(&self, id: &str) -> String {
        naming::scoped_alias(id, self.scope.as_deref())
    }
}

fn netns_error(name: &str, op: &'static str) -> impl FnOnce(std::io::Error) -> FunctionsError {
    let name = name.to_string();
    move |source| FunctionsError::Netns { name, op, source }
}

fn unsupported(desired: &FunctionDesired) -> Option<FunctionAction> {
    match desired.type_ {
        FunctionType::Net => None,
        other => Some(FunctionAction::Unsupported {
            reason: UnsupportedReason::NoEmulation,
            message: format!(
                "{} functions need the DPU's device emulation; the veth simulator makes only net functions",
                match other {
                    FunctionType::Nvme => "nvme",
                    _ => "virtio-blk",
                }
            ),
        }),
    }
}

/// The MAC `eth0` should have: the attached port's, else the function's.
fn tenant_mac(desired: &FunctionDesired) -> Option<Mac> {
    desired.tenant.as_ref().map(|t| t.mac).or(desired.mac)
}

/// Whether the kernel made this address itself (IPv6 link-local), so it is
/// not the tenant's to manage.
fn kernel_made(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// Inside the function's namespace: `lo` and `eth0` up, `eth0`'s MAC and
/// alias, and exactly the tenant's addresses.
async fn configure_tenant_side(
    alias: String,
    mac: Option<Mac>,
    tenant: Option<TenantAddressing>,
) -> Result<bool, FunctionsError> {
    let rtnl = Rtnl::connect()?;
    let Some(eth0) = rtnl.link_by_name(TENANT_IFNAME).await? else {
        return Ok(false);
    };
    if let Some(lo) = rtnl.link_by_name("lo").await?
        && !lo.up
    {
        rtnl.set("RTM_SETLINK lo up", link_up(link_change(lo.index)))
            .await?;
    }
    rtnl.configure(&eth0, &alias, mac.map(|m| m.0)).await?;
    tx_checksum_off(TENANT_IFNAME)?;
    let want: Vec<(IpAddr, u8)> = tenant.map(|t| t.addresses).unwrap_or_default();
    for msg in rtnl.addresses(eth0.index).await? {
        let Some(ip) = address_of(&msg) else { continue };
        let keep = kernel_made(&ip) || want.contains(&(ip, msg.header.prefix_len));
        if !keep {
            rtnl.del_address(msg).await?;
        }
    }
    for (ip, prefix) in want {
        rtnl.add_address(eth0.index, ip, prefix).await?;
    }
    Ok(true)
}

/// `ETHTOOL_STXCSUM` off on `ifname` of the calling thread's namespace (the
/// legacy `SIOCETHTOOL` ioctl, as `ethtool -K ifname tx off` does on old
/// kernels). A veth hands its peer packets with a partial checksum to save
/// the work; Open vSwitch's userspace datapath receives them from AF_PACKET
/// without fixing them and its conntrack then drops TCP as invalid. The
/// simulated tenant therefore computes its checksums, as a NIC would.
fn tx_checksum_off(ifname: &str) -> Result<(), FunctionsError> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    // SAFETY: an all-zero ifreq is valid; the name fits (checked below).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = ifname.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return Err(FunctionsError::NoDevice(ifname.to_string()));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: plain socket(2); the fd is closed below on every path.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let op = || format!("ioctl SIOCETHTOOL ETHTOOL_STXCSUM {ifname} off");
    if fd < 0 {
        return Err(FunctionsError::netlink(
            op(),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `req` points at `value`, both live for the call.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &raw mut req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(FunctionsError::netlink(op(), err));
    }
    Ok(())
}

/// Makes the namespace `ns` (absent: created; present: kept).
async fn netns_add(ns: &str) -> Result<(), FunctionsError> {
    let owned = ns.to_string();
    tokio::task::spawn_blocking(move || netns::create(&owned))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(netns_error(ns, "create"))
}

/// Removes the namespace `ns` (absent is fine).
async fn netns_del(ns: &str) -> Result<(), FunctionsError> {
    let owned = ns.to_string();
    tokio::task::spawn_blocking(move || netns::remove(&owned))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(netns_error(ns, "remove"))
}

/// In the calling thread's namespace (the switch's): the representor of
/// function `id`, its peer `eth0` in namespace `ns`, both configured.
async fn make_pair(
    id: String,
    ns: String,
    alias: String,
    mac: Option<Mac>,
    tenant: Option<TenantAddressing>,
) -> Result<Applied, FunctionsError> {
    let rep = naming::veth_representor(&id);
    let rtnl = Rtnl::connect()?;
    let mut link = rtnl.link_by_name(&rep).await?;
    if let Some(l) = &link
        && let Some(other) = l
            .alias
            .as_deref()
            .filter(|a| naming::function_of_alias(a) != Some(id.as_str()))
    {
        return Err(FunctionsError::NotOurs {
            name: rep,
            alias: Some(other.to_string()),
        });
    }
    for attempt in 0..2 {
        if link.is_none() {
            let ns_file = netns::open(&ns).map_err(netns_error(&ns, "open"))?;
            let msg = veth_pair(
                &rep,
                TENANT_IFNAME,
                std::os::fd::AsRawFd::as_raw_fd(&ns_file),
                mac.map(|m| m.0),
            );
            rtnl.add(
                &format!("RTM_NEWLINK {rep} type veth peer {TENANT_IFNAME} netns {ns}"),
                msg,
            )
            .await?;
            drop(ns_file);
            link = rtnl.link_by_name(&rep).await?;
        }
        let Some(l) = &link else {
            return Err(FunctionsError::NoDevice(rep));
        };
        rtnl.configure(l, &alias, None).await?;
        let (ns_alias, tenant) = (alias.clone(), tenant.clone());
        let peer_found = netns::run_in(&ns, move || configure_tenant_side(ns_alias, mac, tenant))
            .await
            .map_err(netns_error(&ns, "enter"))??;
        if peer_found {
            return Ok(Applied::Ready {
                representor: rep,
                host_device: Some(TENANT_IFNAME.to_string()),
            });
        }
        // The representor outlived its peer (the namespace was replaced):
        // make the pair again, once.
        tracing::warn!(function = %id, representor = %rep, namespace = %ns, attempt, "representor without eth0 in its namespace; recreating the pair");
        rtnl.del(&format!("RTM_DELLINK {rep}"), l.index).await?;
        link = None;
    }
    Err(FunctionsError::NoDevice(format!("{ns}/{TENANT_IFNAME}")))
}

/// In the calling thread's namespace: the links whose ifalias is an
/// agent's, as (function id, scope, link name).
async fn tagged_links() -> Result<Vec<(String, Option<String>, String)>, FunctionsError> {
    let rtnl = Rtnl::connect()?;
    Ok(rtnl
        .links()
        .await?
        .into_iter()
        .filter_map(|link| {
            let (owner, scope) = link.alias.as_deref().and_then(naming::parse_alias)?;
            Some((owner.to_string(), scope.map(str::to_string), link.name))
        })
        .collect())
}

/// In the calling thread's namespace: deletes the representor of `id`
/// unless another owner tagged it.
async fn delete_representor(id: String) -> Result<(), FunctionsError> {
    let rep = naming::veth_representor(&id);
    let rtnl = Rtnl::connect()?;
    if let Some(link) = rtnl.link_by_name(&rep).await? {
        match link.alias.as_deref() {
            // Ours, or ours half-made (the alias is set right after creation).
            None => rtnl.del(&format!("RTM_DELLINK {rep}"), link.index).await?,
            Some(a) if naming::function_of_alias(a) == Some(id.as_str()) => {
                rtnl.del(&format!("RTM_DELLINK {rep}"), link.index).await?
            }
            Some(other) => {
                tracing::warn!(function = %id, link = %rep, alias = %other, "not removing a link that another owner tagged");
            }
        }
    }
    Ok(())
}

impl FunctionBackend for VethBackend {
    fn name(&self) -> &'static str {
        "veth"
    }

    fn observe(&self) -> BoxFuture<'_, Result<Vec<ObservedFunction>, FunctionsError>> {
        Box::pin(async move {
            let mut found = Vec::new();
            let mut owners = std::collections::BTreeSet::new();
            for (owner, scope, name) in self.in_switch(tagged_links).await? {
                if self.scope.is_some() && scope.as_deref() != self.scope.as_deref() {
                    continue;
                }
                owners.insert(owner.clone());
                found.push(ObservedFunction {
                    owner: Some(owner),
                    what: format!("link {name}"),
                });
            }
            let names = netns::list().map_err(netns_error(netns::NETNS_RUN_DIR, "list"))?;
            for name in names {
                // A scoped backend claims a namespace only through its link.
                if let Some(owner) = naming::function_of_netns(&name)
                    && (self.scope.is_none() || owners.contains(owner))
                {
                    found.push(ObservedFunction {
                        owner: Some(owner.to_string()),
                        what: format!("netns {name}"),
                    });
                }
            }
            found.sort();
            Ok(found)
        })
    }

    fn plays_tenant(&self) -> bool {
        true
    }

    fn ready_message(&self, d: &FunctionDesired, representor: &str) -> String {
        format!(
            "veth pair {representor} <-> {TENANT_IFNAME} in netns {}{}",
            naming::netns_name(&d.id),
            if d.tenant.is_some() {
                ""
            } else {
                " (no port attached yet: eth0 has no address)"
            }
        )
    }

    fn plan_apply(&self, d: &FunctionDesired) -> Vec<FunctionAction> {
        if let Some(unsupported) = unsupported(d) {
            return vec![unsupported];
        }
        let netns = naming::netns_name(&d.id);
        vec![
            FunctionAction::NetnsAdd {
                name: netns.clone(),
            },
            FunctionAction::VethPair(VethPair {
                id: d.id.clone(),
                representor: naming::veth_representor(&d.id),
                switch_netns: self.switch_netns.clone(),
                netns,
                alias: self.alias(&d.id),
                mac: tenant_mac(d),
                tenant: d.tenant.clone(),
            }),
        ]
    }

    fn plan_remove(&self, id: &str, _slot: Option<(&str, Slot)>) -> Vec<FunctionAction> {
        let netns = naming::netns_name(id);
        vec![
            FunctionAction::VethDelete {
                id: id.to_string(),
                representor: naming::veth_representor(id),
                switch_netns: self.switch_netns.clone(),
                netns: netns.clone(),
            },
            FunctionAction::NetnsDel { name: netns },
        ]
    }

    fn execute<'a>(&'a self, action: &'a FunctionAction) -> ExecuteFuture<'a> {
        Box::pin(async move {
            match action {
                FunctionAction::NetnsAdd { name } => netns_add(name).await.map(|()| None),
                FunctionAction::VethPair(p) if p.switch_netns == self.switch_netns => {
                    let p = p.clone();
                    self.in_switch(move || make_pair(p.id, p.netns, p.alias, p.mac, p.tenant))
                        .await
                        .map(Some)
                }
                FunctionAction::VethDelete {
                    id, switch_netns, ..
                } if *switch_netns == self.switch_netns => {
                    let id = id.clone();
                    self.in_switch(move || delete_representor(id))
                        .await
                        .map(|()| None)
                }
                FunctionAction::NetnsDel { name } => netns_del(name).await.map(|()| None),
                other => Err(foreign_action(self.name(), other)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(type_: FunctionType, tenant: Option<TenantAddressing>) -> FunctionDesired {
        FunctionDesired {
            id: "web-1".into(),
            type_,
            pf: "pf0".into(),
            slot: Slot::Vf(0),
            mac: Some("02:00:00:00:00:01".parse().unwrap()),
            vlan: None,
            max_tx_rate_mbps: None,
            trust: false,
            spoof_check: true,
            rdma: false,
            tenant,
        }
    }

    #[test]
    fn plan_names_every_operation() {
        let t = TenantAddressing {
            mac: "02:00:00:00:00:02".parse().unwrap(),
            addresses: vec![("10.0.0.2".parse().unwrap(), 24)],
        };
        let plan = VethBackend::new().plan_apply(&desired(FunctionType::Net, Some(t)));
        let text = super::super::plan::lines(&plan).join("\n");
        assert!(text.contains("netns add dpu-fn-web-1"), "{text}");
        assert!(text.contains("RTM_NEWLINK fn-web-1 type veth peer eth0 netns dpu-fn-web-1 address 02:00:00:00:00:02"), "{text}");
        assert!(text.contains("RTM_NEWADDR 10.0.0.2/24 dev eth0"), "{text}");
        let rm =
            super::super::plan::lines(&VethBackend::new().plan_remove("web-1", None)).join("\n");
        let in_sw = super::super::plan::lines(
            &VethBackend::scoped("s")
                .in_switch_netns(Some("dpu-dev-1".into()))
                .plan_remove("web-1", None),
        )
        .join("\n");
        assert!(
            in_sw.contains("in netns dpu-dev-1: RTM_DELLINK fn-web-1"),
            "{in_sw}"
        );
        assert!(
            rm.contains("RTM_DELLINK fn-web-1") && rm.contains("netns del dpu-fn-web-1"),
            "{rm}"
        );
    }

    #[test]
    fn storage_functions_are_not_simulated() {
        for t in [FunctionType::Nvme, FunctionType::VirtioBlk] {
            let d = desired(t, None);
            assert!(matches!(
                unsupported(&d),
                Some(FunctionAction::Unsupported {
                    reason: UnsupportedReason::NoEmulation,
                    ..
                })
            ));
            assert!(
                VethBackend::new().plan_apply(&d)[0]
                    .to_string()
                    .starts_with("nothing:")
            );
        }
    }

    #[test]
    fn link_local_addresses_are_the_kernels() {
        assert!(kernel_made(&"fe80::1".parse().unwrap()));
        assert!(!kernel_made(&"fd00::1".parse().unwrap()));
        assert!(!kernel_made(&"10.0.0.1".parse().unwrap()));
    }
}
