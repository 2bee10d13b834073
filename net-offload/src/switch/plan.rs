//! Pure planning of the bridge's OVSDB side: which representor and tunnel
//! ports to add or remove, and the OpenFlow port numbers the compiler needs.

use std::collections::{BTreeMap, BTreeSet};

use crate::ovsdb::{InterfaceRow, PortRow, PortSpec, owner_of, owner_value};
use crate::pipeline::{DesiredNetworking, Encap};

/// Name of the flow-based tunnel port of `encap`.
pub fn tunnel_port_name(encap: Encap) -> Option<&'static str> {
    match encap {
        Encap::Vxlan => Some("dpu-vxlan"),
        Encap::Geneve => Some("dpu-geneve"),
        Encap::Local => None,
    }
}

/// The ports the agent wants on the bridge: one system port per representor
/// (owner `port/<id>`) and one flow-based tunnel port per encapsulation in
/// use (owner `tunnel/<type>`).
pub fn desired_ports(
    networking: &DesiredNetworking,
    representors: &BTreeMap<String, String>,
) -> Vec<PortSpec> {
    let mut out: BTreeMap<String, PortSpec> = BTreeMap::new();
    for p in &networking.ports {
        if let Some(dev) = representors.get(&p.id) {
            out.entry(dev.clone())
                .or_insert_with(|| PortSpec::system(dev, &owner_value("port", &p.id)));
        }
    }
    let encaps: BTreeSet<Encap> = networking.networks.iter().map(|n| n.encap).collect();
    for encap in encaps {
        if let (Some(name), Some(kind)) = (tunnel_port_name(encap), encap.interface_type()) {
            out.insert(
                name.to_string(),
                PortSpec::flow_tunnel(name, kind, &owner_value("tunnel", kind)),
            );
        }
    }
    out.into_values().collect()
}

/// OVSDB changes for the bridge's ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortPlan {
    pub add: Vec<PortSpec>,
    /// Names of agent-owned ports no longer wanted.
    pub remove: Vec<String>,
}

impl PortPlan {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// One line per OVSDB operation, for `plan`.
    pub fn describe(&self, bridge: &str) -> Vec<String> {
        let mut lines = Vec::new();
        for p in &self.add {
            let opts: Vec<String> = p.options.iter().map(|(k, v)| format!("{k}={v}")).collect();
            lines.push(format!(
                "ovsdb: insert Port+Interface {} type={}{} external_ids:dpu-agent/owner={} into Bridge {bridge}",
                p.name,
                p.interface_type,
                if opts.is_empty() {
                    String::new()
                } else {
                    format!(" options:{{{}}}", opts.join(","))
                },
                p.owner
            ));
        }
        for name in &self.remove {
            lines.push(format!("ovsdb: delete Port {name} from Bridge {bridge}"));
        }
        lines
    }
}

/// Plans ports: add what is missing by name, remove agent-owned ports (owner
/// `port/` or `tunnel/`) not desired. A port of that name owned by someone
/// else (an operator, or a test attaching a representor by hand) is used as
/// it is, never replaced.
pub fn plan_ports(desired: &[PortSpec], observed: &[PortRow]) -> PortPlan {
    let wanted: BTreeSet<&str> = desired.iter().map(|p| p.name.as_str()).collect();
    let present: BTreeSet<&str> = observed.iter().map(|p| p.name.as_str()).collect();
    let add = desired
        .iter()
        .filter(|p| !present.contains(p.name.as_str()))
        .cloned()
        .collect();
    let remove = observed
        .iter()
        .filter(|p| !wanted.contains(p.name.as_str()))
        .filter(|p| {
            owner_of(&p.external_ids)
                .is_some_and(|o| o.starts_with("port/") || o.starts_with("tunnel/"))
        })
        .map(|p| p.name.clone())
        .collect();
    PortPlan { add, remove }
}

/// `name → ofport` of the interfaces ovs-vswitchd opened (ofport > 0).
pub fn ofports(interfaces: &[InterfaceRow]) -> BTreeMap<String, u32> {
    interfaces
        .iter()
        .filter_map(|i| match i.ofport {
            Some(n) if n > 0 && n < 0xff00 => Some((i.name.clone(), n as u32)),
            _ => None,
        })
        .collect()
}

/// Fills in the ofports of ports (from their representors) and tunnels.
pub fn resolve_ofports(
    networking: &DesiredNetworking,
    representors: &BTreeMap<String, String>,
    ofports: &BTreeMap<String, u32>,
) -> DesiredNetworking {
    let mut out = networking.clone();
    for p in &mut out.ports {
        p.ofport = representors
            .get(&p.id)
            .and_then(|d| ofports.get(d))
            .copied();
    }
    out.tunnel_ofports = [Encap::Vxlan, Encap::Geneve]
        .into_iter()
        .filter_map(|e| {
            let name = tunnel_port_name(e)?;
            Some((e, *ofports.get(name)?))
        })
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovsdb::{OWNER_KEY, Uuid};
    use crate::pipeline::{NetworkDesc, PortDesc, SecurityDesc};

    fn row(name: &str, owner: Option<&str>) -> PortRow {
        PortRow {
            uuid: Uuid::from_u128(1),
            name: name.into(),
            interfaces: BTreeSet::new(),
            tag: None,
            other_config: BTreeMap::new(),
            external_ids: owner
                .map(|o| BTreeMap::from([(OWNER_KEY.to_string(), o.to_string())]))
                .unwrap_or_default(),
        }
    }

    fn desired() -> (DesiredNetworking, BTreeMap<String, String>) {
        let d = DesiredNetworking {
            networks: vec![NetworkDesc {
                id: "n".into(),
                tenant: "t".into(),
                vni: 5,
                encap: Encap::Vxlan,
            }],
            ports: vec![PortDesc {
                id: "p1".into(),
                tenant: "t".into(),
                network: "n".into(),
                mac: [2, 0, 0, 0, 0, 1],
                ips: vec![],
                security: SecurityDesc::default(),
                qos: None,
                ofport: None,
            }],
            ..Default::default()
        };
        (d, BTreeMap::from([("p1".to_string(), "rep1".to_string())]))
    }

    #[test]
    fn adds_missing_removes_only_owned_strays() {
        let (d, reps) = desired();
        let want = desired_ports(&d, &reps);
        let names: Vec<_> = want.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["dpu-vxlan", "rep1"]);
        let observed = vec![
            row("br-int", Some("bridge/br-int")),
            row("dpu-vxlan", Some("tunnel/vxlan")),
            row("old", Some("port/gone")),
            row("operator", None),
        ];
        let plan = plan_ports(&want, &observed);
        assert_eq!(plan.add.len(), 1);
        assert_eq!(plan.add[0].name, "rep1");
        assert_eq!(plan.add[0].owner, "port/p1");
        assert_eq!(plan.remove, vec!["old".to_string()]);
        assert!(plan.describe("br-int")[0].contains("rep1 type=system"));
        // A representor already attached by someone else is used, not re-added.
        let plan = plan_ports(&want, &[row("rep1", None), row("dpu-vxlan", None)]);
        assert!(plan.is_empty());
    }

    #[test]
    fn resolves_ofports() {
        let (d, reps) = desired();
        let ofp = BTreeMap::from([("rep1".to_string(), 4), ("dpu-vxlan".to_string(), 9)]);
        let r = resolve_ofports(&d, &reps, &ofp);
        assert_eq!(r.ports[0].ofport, Some(4));
        assert_eq!(r.tunnel_ofports.get(&Encap::Vxlan), Some(&9));
        let r = resolve_ofports(&d, &reps, &BTreeMap::new());
        assert_eq!(r.ports[0].ofport, None);
    }
}
