//! Conveniences on the Open_vSwitch database the agent needs: initialize the
//! root row, ensure a bridge, add or remove many ports in one transaction.
//!
//! Every row these create carries `external_ids:dpu-agent/owner=<kind>/<id>`
//! ([`OWNER_KEY`]) so reconcile can tell its rows from an operator's. Batching
//! matters: ovs-vswitchd re-checks every port of a bridge per transaction, so
//! one transaction per port is quadratic (RIG.md §1).
//!
//! Limits: these read the server with `select`, not the replica, so they work
//! on a client without a monitor; they do not wait for ovs-vswitchd to apply
//! the change (watch `Interface.ofport`/`error` in the replica for that).

use std::collections::{BTreeMap, BTreeSet};

use super::atom::{Atom, Datum, Uuid};
use super::client::{OvsdbClient, OvsdbError};
use super::monitor::MonitorSpec;
use super::rows::{
    BRIDGE_TABLE, BridgeRow, INTERFACE_TABLE, InterfaceRow, OPEN_VSWITCH_DB, OPEN_VSWITCH_TABLE,
    OWNER_KEY, OpenVswitchRow, PORT_TABLE, PortRow, RowError,
};
use super::transact::{Condition, Mutation, Row, Transaction};

/// Errors of the Open_vSwitch conveniences.
#[derive(Debug, thiserror::Error)]
pub enum VswitchError {
    #[error(transparent)]
    Ovsdb(#[from] OvsdbError),
    #[error(transparent)]
    Row(#[from] RowError),
    #[error("bridge {0} does not exist in the Open_vSwitch database")]
    BridgeNotFound(String),
    #[error(
        "the Open_vSwitch database has no root row; initialize it first (OvsdbClient::init_open_vswitch)"
    )]
    NoRootRow,
    #[error("a {0} row returned by select has no _uuid")]
    MissingUuid(&'static str),
}

/// Replicates the columns the typed rows read from Open_vSwitch, Bridge, Port
/// and Interface.
pub fn vswitch_monitor() -> MonitorSpec {
    MonitorSpec::new(OPEN_VSWITCH_DB)
        .table(OPEN_VSWITCH_TABLE, OpenVswitchRow::COLUMNS)
        .table(BRIDGE_TABLE, BridgeRow::COLUMNS)
        .table(PORT_TABLE, PortRow::COLUMNS)
        .table(INTERFACE_TABLE, InterfaceRow::COLUMNS)
}

/// A bridge as the agent wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: String,
    /// `netdev` (userspace datapath) or `system`.
    pub datapath_type: String,
    /// `Some("secure")`: no flows until a controller (we) adds them.
    pub fail_mode: Option<String>,
    /// e.g. `["OpenFlow13", "OpenFlow14"]`; empty keeps OVS's default.
    pub protocols: Vec<String>,
    /// The [`OWNER_KEY`] value for rows created (`<kind>/<id>`).
    pub owner: String,
}

/// A port (with its single interface) as the agent wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub name: String,
    /// Interface type: `system`, `internal`, `vxlan`, `geneve`, `patch`, ...
    pub interface_type: String,
    /// Interface options, e.g. `remote_ip=flow`, `key=flow`.
    pub options: BTreeMap<String, String>,
    /// Access VLAN.
    pub tag: Option<u16>,
    /// Ask ovs-vswitchd for this OpenFlow port number.
    pub ofport_request: Option<u16>,
    /// The [`OWNER_KEY`] value (`<kind>/<id>`), set on the Port and Interface.
    pub owner: String,
    /// More external_ids (the owner key is always set from `owner`).
    pub external_ids: BTreeMap<String, String>,
}

impl PortSpec {
    fn new(name: &str, interface_type: &str, owner: &str) -> Self {
        PortSpec {
            name: name.to_owned(),
            interface_type: interface_type.to_owned(),
            options: BTreeMap::new(),
            tag: None,
            ofport_request: None,
            owner: owner.to_owned(),
            external_ids: BTreeMap::new(),
        }
    }

    /// An internal (tap, in the userspace datapath) port.
    pub fn internal(name: &str, owner: &str) -> Self {
        Self::new(name, "internal", owner)
    }

    /// An existing netdev (e.g. a veth end or a VF representor).
    pub fn system(name: &str, owner: &str) -> Self {
        Self::new(name, "system", owner)
    }

    /// A flow-based tunnel port (`vxlan`, `geneve`) whose remote and key come
    /// from the flow: `options:remote_ip=flow, key=flow`.
    pub fn flow_tunnel(name: &str, kind: &str, owner: &str) -> Self {
        let mut spec = Self::new(name, kind, owner);
        spec.options = BTreeMap::from([
            ("remote_ip".to_owned(), "flow".to_owned()),
            ("key".to_owned(), "flow".to_owned()),
        ]);
        spec
    }

    fn external_ids(&self) -> Datum {
        let mut ids = self.external_ids.clone();
        ids.insert(OWNER_KEY.to_owned(), self.owner.clone());
        Datum::map(ids)
    }
}

fn owner_ids(owner: &str) -> Datum {
    Datum::map([(OWNER_KEY, owner)])
}

fn row(pairs: Vec<(&str, Datum)>) -> Row {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn uuid_of(table: &'static str, row: &Row) -> Result<Uuid, VswitchError> {
    row.get("_uuid")
        .and_then(|d| d.as_uuid().ok())
        .ok_or(VswitchError::MissingUuid(table))
}

impl OvsdbClient {
    /// Creates the Open_vSwitch root row if absent (what `ovs-vsctl init`
    /// does) and returns its UUID.
    pub async fn init_open_vswitch(&self) -> Result<Uuid, VswitchError> {
        for _ in 0..2 {
            let mut txn = Transaction::new(OPEN_VSWITCH_DB);
            let sel = txn.select(OPEN_VSWITCH_TABLE, vec![], Some(&["_uuid"]));
            let reply = self.transact(&txn).await?;
            if let Some(existing) = reply.rows(sel).first() {
                return uuid_of(OPEN_VSWITCH_TABLE, existing);
            }
            let mut txn = Transaction::new(OPEN_VSWITCH_DB);
            let ins = txn.insert(OPEN_VSWITCH_TABLE, Row::new());
            txn.comment("dpu-agent: initialize Open_vSwitch");
            match self.transact(&txn).await {
                Ok(reply) => {
                    return reply
                        .uuid(&ins)
                        .ok_or(VswitchError::MissingUuid(OPEN_VSWITCH_TABLE));
                }
                // maxRows is 1: someone else created it in between; select again.
                Err(OvsdbError::Transact(e)) => {
                    tracing::debug!(error = %e, "Open_vSwitch row created concurrently");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(VswitchError::NoRootRow)
    }

    /// Reads one bridge by name from the server.
    pub async fn bridge(&self, name: &str) -> Result<Option<BridgeRow>, VswitchError> {
        let mut txn = Transaction::new(OPEN_VSWITCH_DB);
        let mut columns = vec!["_uuid"];
        columns.extend_from_slice(BridgeRow::COLUMNS);
        let sel = txn.select(
            BRIDGE_TABLE,
            vec![Condition::eq("name", name)],
            Some(&columns),
        );
        let reply = self.transact(&txn).await?;
        match reply.rows(sel).first() {
            None => Ok(None),
            Some(r) => Ok(Some(BridgeRow::from_row(uuid_of(BRIDGE_TABLE, r)?, r)?)),
        }
    }

    /// Makes sure bridge `spec.name` exists with the given datapath type, fail
    /// mode and protocols, creating it (with its local internal port, as
    /// `ovs-vsctl add-br` does) if absent. An existing bridge is updated in
    /// place and keeps its external_ids (it may be an operator's). Returns the
    /// bridge's UUID.
    pub async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<Uuid, VswitchError> {
        let wanted_fail_mode = Datum::optional(spec.fail_mode.as_deref());
        let wanted_protocols = Datum::set(spec.protocols.iter().map(String::as_str));
        if let Some(existing) = self.bridge(&spec.name).await? {
            let protocols: BTreeSet<String> = spec.protocols.iter().cloned().collect();
            let same = existing.datapath_type == spec.datapath_type
                && existing.fail_mode == spec.fail_mode
                && existing.protocols == protocols;
            if !same {
                let mut txn = Transaction::new(OPEN_VSWITCH_DB);
                txn.update(
                    BRIDGE_TABLE,
                    vec![Condition::uuid(existing.uuid)],
                    row(vec![
                        ("datapath_type", spec.datapath_type.as_str().into()),
                        ("fail_mode", wanted_fail_mode),
                        ("protocols", wanted_protocols),
                    ]),
                );
                txn.comment(format!("dpu-agent: update bridge {}", spec.name));
                self.transact(&txn).await?;
            }
            return Ok(existing.uuid);
        }
        let mut txn = Transaction::new(OPEN_VSWITCH_DB);
        let iface = txn.insert(
            INTERFACE_TABLE,
            row(vec![
                ("name", spec.name.as_str().into()),
                ("type", "internal".into()),
                ("external_ids", owner_ids(&spec.owner)),
            ]),
        );
        let port = txn.insert(
            PORT_TABLE,
            row(vec![
                ("name", spec.name.as_str().into()),
                ("interfaces", Datum::set([iface.reference()])),
                ("external_ids", owner_ids(&spec.owner)),
            ]),
        );
        let bridge = txn.insert(
            BRIDGE_TABLE,
            row(vec![
                ("name", spec.name.as_str().into()),
                ("datapath_type", spec.datapath_type.as_str().into()),
                ("fail_mode", wanted_fail_mode),
                ("protocols", wanted_protocols),
                ("ports", Datum::set([port.reference()])),
                ("external_ids", owner_ids(&spec.owner)),
            ]),
        );
        let attach = txn.mutate(
            OPEN_VSWITCH_TABLE,
            vec![],
            vec![
                Mutation::insert("bridges", Datum::set([bridge.reference()])),
                Mutation::add("next_cfg", 1),
            ],
        );
        txn.comment(format!("dpu-agent: create bridge {}", spec.name));
        let reply = self.transact(&txn).await?;
        // Without a root row the bridge was unreferenced and garbage-collected.
        if reply.count(attach) != Some(1) {
            return Err(VswitchError::NoRootRow);
        }
        reply
            .uuid(&bridge)
            .ok_or(VswitchError::MissingUuid(BRIDGE_TABLE))
    }

    /// Deletes a bridge (its ports and interfaces go with it). Returns whether
    /// it existed.
    pub async fn delete_bridge(&self, name: &str) -> Result<bool, VswitchError> {
        let Some(existing) = self.bridge(name).await? else {
            return Ok(false);
        };
        let mut txn = Transaction::new(OPEN_VSWITCH_DB);
        txn.mutate(
            OPEN_VSWITCH_TABLE,
            vec![],
            vec![
                Mutation::delete("bridges", Datum::set([existing.uuid])),
                Mutation::add("next_cfg", 1),
            ],
        );
        txn.comment(format!("dpu-agent: delete bridge {name}"));
        self.transact(&txn).await?;
        Ok(true)
    }

    /// Adds all `ports` to `bridge` in ONE transaction: either all are added
    /// or none. Returns the new Port UUIDs in order.
    pub async fn add_ports(
        &self,
        bridge: &str,
        ports: &[PortSpec],
    ) -> Result<Vec<Uuid>, VswitchError> {
        if ports.is_empty() {
            return Ok(Vec::new());
        }
        let mut txn = Transaction::new(OPEN_VSWITCH_DB);
        let mut inserted = Vec::with_capacity(ports.len());
        for spec in ports {
            let mut iface_row = row(vec![
                ("name", spec.name.as_str().into()),
                ("type", spec.interface_type.as_str().into()),
                ("options", Datum::map(spec.options.clone())),
                ("external_ids", spec.external_ids()),
            ]);
            if let Some(ofport) = spec.ofport_request {
                iface_row.insert("ofport_request".into(), Datum::set([i64::from(ofport)]));
            }
            let iface = txn.insert(INTERFACE_TABLE, iface_row);
            let mut port_row = row(vec![
                ("name", spec.name.as_str().into()),
                ("interfaces", Datum::set([iface.reference()])),
                ("external_ids", spec.external_ids()),
            ]);
            if let Some(tag) = spec.tag {
                port_row.insert("tag".into(), Datum::set([i64::from(tag)]));
            }
            inserted.push(txn.insert(PORT_TABLE, port_row));
        }
        let refs: Vec<Atom> = inserted.iter().map(|p| p.reference()).collect();
        let attach = txn.mutate(
            BRIDGE_TABLE,
            vec![Condition::eq("name", bridge)],
            vec![Mutation::insert("ports", Datum::set(refs))],
        );
        txn.mutate(
            OPEN_VSWITCH_TABLE,
            vec![],
            vec![Mutation::add("next_cfg", 1)],
        );
        txn.comment(format!("dpu-agent: add {} ports to {bridge}", ports.len()));
        let reply = self.transact(&txn).await?;
        // No bridge matched: the new ports were unreferenced and collected.
        if reply.count(attach) != Some(1) {
            return Err(VswitchError::BridgeNotFound(bridge.to_owned()));
        }
        inserted
            .iter()
            .map(|p| reply.uuid(p).ok_or(VswitchError::MissingUuid(PORT_TABLE)))
            .collect()
    }

    /// Removes the named ports from `bridge` in one transaction (their
    /// interfaces go with them). Names not on the bridge are ignored. Returns
    /// how many were removed.
    pub async fn remove_ports(&self, bridge: &str, names: &[&str]) -> Result<usize, VswitchError> {
        if names.is_empty() {
            return Ok(0);
        }
        let Some(existing) = self.bridge(bridge).await? else {
            return Err(VswitchError::BridgeNotFound(bridge.to_owned()));
        };
        let mut txn = Transaction::new(OPEN_VSWITCH_DB);
        let sel = txn.select(PORT_TABLE, vec![], Some(&["_uuid", "name"]));
        let reply = self.transact(&txn).await?;
        let wanted: BTreeSet<&str> = names.iter().copied().collect();
        let mut victims = Vec::new();
        for r in reply.rows(sel) {
            let uuid = uuid_of(PORT_TABLE, r)?;
            let name = r.get("name").and_then(|d| d.as_string().ok());
            if existing.ports.contains(&uuid) && name.is_some_and(|n| wanted.contains(n.as_str())) {
                victims.push(uuid);
            }
        }
        if victims.is_empty() {
            return Ok(0);
        }
        let mut txn = Transaction::new(OPEN_VSWITCH_DB);
        txn.mutate(
            BRIDGE_TABLE,
            vec![Condition::uuid(existing.uuid)],
            vec![Mutation::delete(
                "ports",
                Datum::set(victims.iter().copied()),
            )],
        );
        txn.mutate(
            OPEN_VSWITCH_TABLE,
            vec![],
            vec![Mutation::add("next_cfg", 1)],
        );
        txn.comment(format!(
            "dpu-agent: remove {} ports from {bridge}",
            victims.len()
        ));
        self.transact(&txn).await?;
        Ok(victims.len())
    }
}
