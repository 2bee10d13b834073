//! The bridge's ports and their interfaces' ofports as the reconciler last
//! read them from the OVSDB replica: read in full ([`BridgePorts::read`]),
//! or brought up to date by decoding only the rows the replica says changed
//! since ([`BridgePorts::refresh`]), with the same result either way.

use std::collections::{BTreeMap, BTreeSet};

use crate::ovsdb::rows::{BRIDGE_TABLE, INTERFACE_TABLE, PORT_TABLE};
use crate::ovsdb::{InterfaceRow, PortRow, Replica, ReplicaCursor, RowError, Uuid};

use super::plan::{ofports, opened_ofport};

/// The bridge's ports (present in the replica, by uuid) and the ofports of
/// their interfaces, with what an incremental read needs.
#[derive(Debug, Clone, Default)]
pub struct BridgePorts {
    /// Where the replica stood at the read; `None` before the first one.
    cursor: Option<ReplicaCursor>,
    /// The bridge's row (`None`: no bridge of that name).
    bridge: Option<Uuid>,
    /// The bridge row's `ports`.
    bridge_ports: BTreeSet<Uuid>,
    /// The Port rows of `bridge_ports` the replica has.
    ports: BTreeMap<Uuid, PortRow>,
    /// How many of `ports` list each interface.
    iface_refs: BTreeMap<Uuid, usize>,
    /// The Interface rows of `iface_refs` the replica has.
    ifaces: BTreeMap<Uuid, InterfaceRow>,
    /// Name → uuid → ofport of the opened ones among `ifaces`.
    opened: BTreeMap<String, BTreeMap<Uuid, u32>>,
    /// Name → ofport, as [`ofports`] computes it over `ifaces` in uuid
    /// order (of two of one name, the greater uuid's).
    ofports: BTreeMap<String, u32>,
    /// The names whose ofport changed since [`BridgePorts::take_moved`]
    /// (`None`: any may have, after a full read).
    moved_ofports: Option<BTreeSet<String>>,
    /// `ports`' uuids by name.
    by_name: BTreeMap<String, BTreeSet<Uuid>>,
    /// The names of the Port rows that changed (joined, left or changed,
    /// before and after) since [`BridgePorts::take_changed_names`]
    /// (`None`: any may have, after a full read).
    changed_names: Option<BTreeSet<String>>,
}

/// What moved in a [`BridgePorts`] since it was last asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MovedOfports {
    /// Any ofport may have moved (a full read happened).
    Any,
    /// Only these interfaces' ofports moved.
    Names(BTreeSet<String>),
}

/// Staged changes of an incremental read: nothing is changed until every
/// changed row decoded.
type Staged<T> = Vec<(Uuid, Option<T>)>;

impl BridgePorts {
    /// The bridge's ports in uuid order.
    pub fn ports(&self) -> impl Iterator<Item = &PortRow> + Clone {
        self.ports.values()
    }

    /// Interface name → ofport of the bridge's opened interfaces.
    pub fn ofports(&self) -> &BTreeMap<String, u32> {
        &self.ofports
    }

    /// The interfaces whose ofport moved since the last call (all of them,
    /// as far as anyone can tell, after a full read or before any call).
    pub fn take_moved(&mut self) -> MovedOfports {
        match self.moved_ofports.replace(BTreeSet::new()) {
            Some(names) => MovedOfports::Names(names),
            None => MovedOfports::Any,
        }
    }

    /// The bridge's Port rows named `name`, in uuid order.
    pub fn ports_named(&self, name: &str) -> impl Iterator<Item = &PortRow> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|uuid| self.ports.get(uuid))
    }

    /// The names of the Port rows that changed since the last call
    /// (`None`: any may have, after a full read or before any call).
    pub fn take_changed_names(&mut self) -> Option<BTreeSet<String>> {
        self.changed_names.replace(BTreeSet::new())
    }

    /// Reads the bridge `bridge`'s ports and their interfaces from the whole
    /// replica. Any Bridge row, or (when the bridge exists) any Port or
    /// Interface row, that does not decode is an error.
    pub fn read(replica: &Replica, bridge: &str) -> Result<Self, RowError> {
        let cursor = Some(replica.cursor());
        let Some(b) = replica.bridge_by_name(bridge)? else {
            return Ok(BridgePorts {
                cursor,
                ..BridgePorts::default()
            });
        };
        let ports: BTreeMap<Uuid, PortRow> = replica
            .ports()?
            .into_iter()
            .filter(|p| b.ports.contains(&p.uuid))
            .map(|p| (p.uuid, p))
            .collect();
        let mut iface_refs = BTreeMap::new();
        for i in ports.values().flat_map(|p| &p.interfaces) {
            *iface_refs.entry(*i).or_default() += 1;
        }
        let ifaces: Vec<InterfaceRow> = replica
            .interfaces()?
            .into_iter()
            .filter(|i| iface_refs.contains_key(&i.uuid))
            .collect();
        let mut opened: BTreeMap<String, BTreeMap<Uuid, u32>> = BTreeMap::new();
        for i in &ifaces {
            if let Some(n) = opened_ofport(i) {
                opened.entry(i.name.clone()).or_default().insert(i.uuid, n);
            }
        }
        let mut by_name: BTreeMap<String, BTreeSet<Uuid>> = BTreeMap::new();
        for p in ports.values() {
            by_name.entry(p.name.clone()).or_default().insert(p.uuid);
        }
        Ok(BridgePorts {
            cursor,
            bridge: Some(b.uuid),
            bridge_ports: b.ports,
            ports,
            by_name,
            changed_names: None,
            iface_refs,
            ofports: ofports(&ifaces),
            ifaces: ifaces.into_iter().map(|i| (i.uuid, i)).collect(),
            opened,
            moved_ofports: None,
        })
    }

    /// Takes a full read's result; true when its ports or ofports differ
    /// from the ones held before.
    pub fn replace(&mut self, read: BridgePorts) -> bool {
        let moved = self.ports != read.ports || self.ofports != read.ofports;
        *self = read;
        self.moved_ofports = None;
        moved
    }

    /// Brings the view up to `replica` by decoding only the rows changed
    /// since the last read (and the bridge rows, when one changed); true
    /// when the ports or ofports moved. `None`, with nothing changed, when
    /// only a full read can tell: no read yet, the replica cannot say what
    /// changed (replaced in a resync, or too many changes), the bridge was
    /// created, deleted or recreated, or a changed row does not decode (the
    /// full read then reports it).
    pub fn refresh(&mut self, replica: &Replica, bridge: &str) -> Option<bool> {
        let changed = replica.changed_since(self.cursor?)?;
        let cursor = Some(replica.cursor());
        let new_bridge_ports = if changed.table(BRIDGE_TABLE).is_empty() {
            None
        } else {
            let b = replica.bridge_by_name(bridge).ok()?;
            if b.as_ref().map(|b| b.uuid) != self.bridge {
                return None;
            }
            b.map(|b| b.ports)
        };
        if self.bridge.is_none() {
            // Still no bridge: a full read would not look at its ports.
            self.cursor = cursor;
            return Some(false);
        }
        // Ports that may have changed: changed rows (those of other
        // bridges too, decoded so that a bad one is found as the full read
        // finds it) and those that joined or left the bridge.
        let mut candidates = changed.table(PORT_TABLE).clone();
        if let Some(new) = &new_bridge_ports {
            candidates.extend(new.symmetric_difference(&self.bridge_ports));
        }
        let members = new_bridge_ports.as_ref().unwrap_or(&self.bridge_ports);
        let mut ports: Staged<PortRow> = Vec::with_capacity(candidates.len());
        let mut ref_delta: BTreeMap<Uuid, isize> = BTreeMap::new();
        for uuid in candidates {
            let row = match replica.row(PORT_TABLE, &uuid) {
                Some(row) => Some(PortRow::from_row(uuid, row).ok()?),
                None => None,
            };
            let row = row.filter(|_| members.contains(&uuid));
            for i in self.ports.get(&uuid).iter().flat_map(|p| &p.interfaces) {
                *ref_delta.entry(*i).or_default() -= 1;
            }
            for i in row.iter().flat_map(|p| &p.interfaces) {
                *ref_delta.entry(*i).or_default() += 1;
            }
            ports.push((uuid, row));
        }
        // Interfaces that may have changed: changed rows and those whose
        // count of referring ports changed.
        let mut candidates = changed.table(INTERFACE_TABLE).clone();
        candidates.extend(ref_delta.iter().filter(|(_, d)| **d != 0).map(|(u, _)| *u));
        let mut ifaces: Staged<InterfaceRow> = Vec::with_capacity(candidates.len());
        for uuid in candidates {
            let row = match replica.row(INTERFACE_TABLE, &uuid) {
                Some(row) => Some(InterfaceRow::from_row(uuid, row).ok()?),
                None => None,
            };
            let refs = self.iface_refs.get(&uuid).copied().unwrap_or(0) as isize
                + ref_delta.get(&uuid).copied().unwrap_or(0);
            ifaces.push((uuid, row.filter(|_| refs > 0)));
        }

        // Every changed row decoded: apply.
        let mut moved = false;
        if let Some(new) = new_bridge_ports {
            self.bridge_ports = new;
        }
        for (uuid, row) in ports {
            let old = self.ports.remove(&uuid);
            if old != row {
                moved = true;
                for name in old.iter().chain(&row).map(|p| &p.name) {
                    if let Some(names) = &mut self.changed_names {
                        names.insert(name.clone());
                    }
                }
            }
            if let Some(old) = &old
                && let Some(uuids) = self.by_name.get_mut(&old.name)
            {
                uuids.remove(&uuid);
                if uuids.is_empty() {
                    self.by_name.remove(&old.name);
                }
            }
            if let Some(row) = row {
                self.by_name
                    .entry(row.name.clone())
                    .or_default()
                    .insert(uuid);
                self.ports.insert(uuid, row);
            }
        }
        for (uuid, delta) in ref_delta {
            let refs = self.iface_refs.get(&uuid).copied().unwrap_or(0) as isize + delta;
            if refs > 0 {
                self.iface_refs.insert(uuid, refs as usize);
            } else {
                self.iface_refs.remove(&uuid);
            }
        }
        let mut names = BTreeSet::new();
        for (uuid, row) in ifaces {
            if let Some(old) = self.ifaces.remove(&uuid)
                && let Some(by_uuid) = self.opened.get_mut(&old.name)
            {
                by_uuid.remove(&uuid);
                names.insert(old.name);
            }
            if let Some(row) = row {
                if let Some(n) = opened_ofport(&row) {
                    self.opened
                        .entry(row.name.clone())
                        .or_default()
                        .insert(uuid, n);
                    names.insert(row.name.clone());
                }
                self.ifaces.insert(uuid, row);
            }
        }
        for name in names {
            let now = self
                .opened
                .get(&name)
                .and_then(|by_uuid| by_uuid.last_key_value())
                .map(|(_, n)| *n);
            if now.is_none() {
                self.opened.remove(&name);
            }
            let before = match now {
                Some(n) => self.ofports.insert(name.clone(), n),
                None => self.ofports.remove(&name),
            };
            if before != now {
                moved = true;
                if let Some(names) = &mut self.moved_ofports {
                    names.insert(name);
                }
            }
        }
        self.cursor = cursor;
        Some(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovsdb::monitor::TableUpdates;
    use crate::ovsdb::{DatabaseSchema, MonitorSpec};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    const BRIDGE: &str = "br-int";

    fn schema() -> DatabaseSchema {
        // `tag` (Port), `error` (Interface) and `fail_mode` (Bridge) are
        // left out: untyped, a wrong shape gets into the replica and makes
        // the row fail to decode.
        let uuids = json!({"key": {"type": "uuid"}, "min": 0, "max": "unlimited"});
        DatabaseSchema::from_json(&json!({
            "name": "Open_vSwitch",
            "tables": {
                "Bridge": {"columns": {"name": {"type": "string"}, "ports": {"type": uuids}}},
                "Port": {"columns": {
                    "name": {"type": "string"},
                    "interfaces": {"type": uuids},
                    "external_ids": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}}
                }},
                "Interface": {"columns": {
                    "name": {"type": "string"},
                    "ofport": {"type": {"key": "integer", "min": 0, "max": 1}}
                }}
            }
        }))
        .unwrap()
    }

    fn apply(replica: &mut Replica, schema: &DatabaseSchema, updates: Value) {
        let spec = MonitorSpec::new("Open_vSwitch")
            .table_all_columns("Bridge")
            .table_all_columns("Port")
            .table_all_columns("Interface");
        let updates = TableUpdates::decode(&updates, schema).unwrap();
        replica.apply(updates, &spec, schema);
    }

    fn uuid(table: &str, i: u8) -> String {
        let base = match table {
            "Bridge" => 0xb000,
            "Port" => 0x9000,
            _ => 0x1000,
        };
        Uuid::from_u128(base + u128::from(i)).to_string()
    }

    fn uuid_set(table: &str, members: &[u8]) -> Value {
        let members: Vec<Value> = members
            .iter()
            .map(|m| json!(["uuid", uuid(table, *m)]))
            .collect();
        json!(["set", members])
    }

    /// The read as the reconciler did it before the incremental one,
    /// verbatim: the oracle.
    fn reference_read(
        r: &Replica,
        bridge: &str,
    ) -> Result<(Vec<PortRow>, BTreeMap<String, u32>), RowError> {
        let Some(b) = r.bridge_by_name(bridge)? else {
            return Ok((Vec::new(), BTreeMap::new()));
        };
        let ports: Vec<PortRow> = r
            .ports()?
            .into_iter()
            .filter(|p| b.ports.contains(&p.uuid))
            .collect();
        let iface_ids: BTreeSet<_> = ports
            .iter()
            .flat_map(|p| p.interfaces.iter().copied())
            .collect();
        let ifaces = r
            .interfaces()?
            .into_iter()
            .filter(|i| iface_ids.contains(&i.uuid))
            .collect::<Vec<_>>();
        Ok((ports, ofports(&ifaces)))
    }

    /// The reconciler's read: incremental when it can, else full. Also
    /// says whether it was incremental.
    fn read(view: &mut BridgePorts, replica: &Replica) -> (Result<bool, RowError>, bool) {
        if let Some(moved) = view.refresh(replica, BRIDGE) {
            return (Ok(moved), true);
        }
        (
            BridgePorts::read(replica, BRIDGE).map(|r| view.replace(r)),
            false,
        )
    }

    /// One monitor update (one row), or a resync.
    #[derive(Debug, Clone)]
    enum Op {
        Port {
            row: u8,
            insert: bool,
            name: u8,
            ifaces: Vec<u8>,
            bad: bool,
        },
        DeletePort(u8),
        Iface {
            row: u8,
            insert: bool,
            name: u8,
            ofport: Option<i64>,
            bad: bool,
        },
        DeleteIface(u8),
        /// Toggles the listed ports in the bridge row's `ports`.
        BridgePorts {
            row: u8,
            toggle: Vec<u8>,
        },
        Bridge {
            row: u8,
            name: u8,
            ports: Vec<u8>,
            bad: bool,
        },
        DeleteBridge(u8),
        /// The replica replaced by a fresh copy (a reconnect's resync).
        Resync,
    }

    fn op() -> impl Strategy<Value = Op> {
        let rows = || prop::collection::vec(0u8..8, 0..3);
        let bad = || prop::bool::weighted(0.05);
        prop_oneof![
            4 => (0u8..8, any::<bool>(), 0u8..5, rows(), bad()).prop_map(
                |(row, insert, name, ifaces, bad)| Op::Port { row, insert, name, ifaces, bad }
            ),
            1 => (0u8..8).prop_map(Op::DeletePort),
            4 => (
                0u8..8,
                any::<bool>(),
                0u8..5,
                prop::option::of(prop::sample::select(vec![-1i64, 0, 1, 2, 3, 7, 0xff00])),
                bad(),
            )
                .prop_map(|(row, insert, name, ofport, bad)| Op::Iface { row, insert, name, ofport, bad }),
            1 => (0u8..8).prop_map(Op::DeleteIface),
            4 => (0u8..2, rows()).prop_map(|(row, toggle)| Op::BridgePorts { row, toggle }),
            1 => (0u8..2, 0u8..2, rows(), bad()).prop_map(|(row, name, ports, bad)| Op::Bridge { row, name, ports, bad }),
            1 => (0u8..2).prop_map(Op::DeleteBridge),
            1 => Just(Op::Resync),
        ]
    }

    fn update(op: &Op) -> Value {
        let verb = |insert: bool| if insert { "insert" } else { "modify" };
        match op {
            Op::Port {
                row,
                insert,
                name,
                ifaces,
                bad,
            } => {
                let mut r = json!({"name": format!("p{name}"), "interfaces": uuid_set("Interface", ifaces),
                    "external_ids": ["map", [["dpu-agent/owner", format!("port/{row}")]]]});
                if *bad {
                    r["tag"] = json!("ten");
                }
                json!({"Port": {uuid("Port", *row): {verb(*insert): r}}})
            }
            Op::Iface {
                row,
                insert,
                name,
                ofport,
                bad,
            } => {
                let ofport = ofport.map_or(json!(["set", []]), |n| json!(n));
                let mut r = json!({"name": format!("p{name}"), "ofport": ofport});
                if *bad {
                    r["error"] = json!(7);
                }
                json!({"Interface": {uuid("Interface", *row): {verb(*insert): r}}})
            }
            Op::BridgePorts { row, toggle } => {
                json!({"Bridge": {uuid("Bridge", *row): {"modify": {"ports": uuid_set("Port", toggle)}}}})
            }
            Op::Bridge {
                row,
                name,
                ports,
                bad,
            } => {
                let name = if *name == 0 { BRIDGE } else { "br-ex" };
                let mut r = json!({"name": name, "ports": uuid_set("Port", ports)});
                if *bad {
                    r["fail_mode"] = json!(1);
                }
                json!({"Bridge": {uuid("Bridge", *row): {"insert": r}}})
            }
            Op::DeletePort(row) => json!({"Port": {uuid("Port", *row): {"delete": null}}}),
            Op::DeleteIface(row) => {
                json!({"Interface": {uuid("Interface", *row): {"delete": null}}})
            }
            Op::DeleteBridge(row) => {
                json!({"Bridge": {uuid("Bridge", *row): {"delete": null}}})
            }
            Op::Resync => json!({}),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// After random monitor updates (read after some of them, a short
        /// change log so that it overflows), the reconciler's read equals
        /// the full read it replaces: ports in order, ofports, moved, and
        /// the error when a row does not decode.
        #[test]
        fn incremental_read_equals_full_read(
            steps in prop::collection::vec((op(), prop::bool::weighted(0.6)), 1..60),
            log_max in prop::sample::select(vec![3usize, 8, CHANGE_LOG_BIG]),
        ) {
            let schema = schema();
            let mut replica = Replica::default();
            replica.limit_change_log(log_max);
            let mut view = BridgePorts::default();
            let mut last: (Vec<PortRow>, BTreeMap<String, u32>) = Default::default();
            // The ofports when the moved names were last taken, and the
            // Port rows with their version at the last read.
            let mut taken: BTreeMap<String, u32> = BTreeMap::new();
            let mut rows: Vec<PortRow> = Vec::new();
            for (op, read_now) in steps {
                if let Op::Resync = op {
                    replica = replica.clone();
                    replica.limit_change_log(log_max);
                } else {
                    apply(&mut replica, &schema, update(&op));
                }
                if !read_now {
                    continue;
                }
                let before = (view.ports().cloned().collect::<Vec<_>>(), view.ofports().clone());
                let (got, _) = read(&mut view, &replica);
                match reference_read(&replica, BRIDGE) {
                    Ok(want) => {
                        prop_assert_eq!(got, Ok(want != last), "moved");
                        prop_assert_eq!(view.ports().cloned().collect::<Vec<_>>(), want.0.clone());
                        prop_assert_eq!(view.ofports(), &want.1);
                        // Every name whose ofport moved since the last take
                        // is listed (unless a full read says "any").
                        if let MovedOfports::Names(names) = view.take_moved() {
                            for name in taken.keys().chain(view.ofports().keys()) {
                                if taken.get(name) != view.ofports().get(name) {
                                    prop_assert!(names.contains(name), "{} not listed", name);
                                }
                            }
                        }
                        taken = view.ofports().clone();
                        // The names of the Port rows that changed are
                        // listed (unless a full read says "any").
                        if let Some(names) = view.take_changed_names() {
                            let by_uuid = |v: &[PortRow]| -> BTreeMap<Uuid, PortRow> {
                                v.iter().map(|p| (p.uuid, p.clone())).collect()
                            };
                            let (a, b) = (by_uuid(&rows), by_uuid(&want.0));
                            for uuid in a.keys().chain(b.keys()) {
                                if a.get(uuid) != b.get(uuid) {
                                    for p in a.get(uuid).into_iter().chain(b.get(uuid)) {
                                        prop_assert!(names.contains(&p.name), "{} not listed", p.name);
                                    }
                                }
                            }
                        }
                        // Rows by name are the rows of that name.
                        for p in &want.0 {
                            let named: Vec<&PortRow> = view.ports_named(&p.name).collect();
                            let all: Vec<&PortRow> =
                                want.0.iter().filter(|q| q.name == p.name).collect();
                            prop_assert_eq!(named, all);
                        }
                        rows = want.0.clone();
                        last = want;
                    }
                    Err(e) => {
                        prop_assert_eq!(got, Err(e));
                        prop_assert_eq!(
                            (view.ports().cloned().collect::<Vec<_>>(), view.ofports().clone()),
                            before
                        );
                    }
                }
            }
        }
    }

    /// A change log long enough for every test sequence.
    const CHANGE_LOG_BIG: usize = 1000;

    /// The reconciler's common case is incremental: a port added, its
    /// ofport assigned, an unrelated change.
    #[test]
    fn a_port_added_is_read_incrementally() {
        let schema = schema();
        let mut replica = Replica::default();
        let op = |op: Op| update(&op);
        apply(
            &mut replica,
            &schema,
            op(Op::Bridge {
                row: 0,
                name: 0,
                ports: vec![0],
                bad: false,
            }),
        );
        for o in [
            op(Op::Port {
                row: 0,
                insert: true,
                name: 0,
                ifaces: vec![0],
                bad: false,
            }),
            op(Op::Iface {
                row: 0,
                insert: true,
                name: 0,
                ofport: Some(1),
                bad: false,
            }),
        ] {
            apply(&mut replica, &schema, o);
        }
        let mut view = BridgePorts::default();
        assert_eq!(read(&mut view, &replica), (Ok(true), false), "first read");

        // The insert's echo: port, interface and bridge row in one update.
        let mut both = op(Op::Port {
            row: 1,
            insert: true,
            name: 1,
            ifaces: vec![1],
            bad: false,
        });
        both["Interface"] = op(Op::Iface {
            row: 1,
            insert: true,
            name: 1,
            ofport: None,
            bad: false,
        })["Interface"]
            .clone();
        both["Bridge"] = op(Op::BridgePorts {
            row: 0,
            toggle: vec![1],
        })["Bridge"]
            .clone();
        apply(&mut replica, &schema, both);
        assert_eq!(read(&mut view, &replica), (Ok(true), true));
        assert_eq!(view.ports().count(), 2);
        assert_eq!(view.ofports().len(), 1);
        // Then its ofport.
        apply(
            &mut replica,
            &schema,
            op(Op::Iface {
                row: 1,
                insert: false,
                name: 1,
                ofport: Some(2),
                bad: false,
            }),
        );
        assert_eq!(read(&mut view, &replica), (Ok(true), true));
        assert_eq!(view.ofports().get("p1"), Some(&2));
        // A port of no bridge: nothing moved.
        apply(
            &mut replica,
            &schema,
            op(Op::Port {
                row: 5,
                insert: true,
                name: 4,
                ifaces: vec![],
                bad: false,
            }),
        );
        assert_eq!(read(&mut view, &replica), (Ok(false), true));
        // A resync: read in full, nothing moved.
        let fresh = replica.clone();
        assert_eq!(read(&mut view, &fresh), (Ok(false), false));
    }
}
