//! Typed rows of the Open_vSwitch database (vswitch.ovsschema) for the
//! columns the agent uses, decoded from replica rows or select results.
//!
//! A column missing from the row decodes as its default (empty set/map, 0,
//! ""), because update2 `initial`/`insert` and narrow selects omit such
//! columns. A column present with the wrong shape is an error naming the table,
//! row and column.

use std::collections::{BTreeMap, BTreeSet};

use super::atom::{Datum, DatumError, Uuid};
use super::monitor::Replica;
use super::transact::Row;

/// Why a row does not decode to its typed form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{table} row {uuid} column {column}: {reason}")]
pub struct RowError {
    pub table: &'static str,
    pub uuid: Uuid,
    pub column: &'static str,
    pub reason: DatumError,
}

pub const OPEN_VSWITCH_DB: &str = "Open_vSwitch";
pub const OPEN_VSWITCH_TABLE: &str = "Open_vSwitch";
pub const BRIDGE_TABLE: &str = "Bridge";
pub const PORT_TABLE: &str = "Port";
pub const INTERFACE_TABLE: &str = "Interface";

/// The `external_ids` key that marks rows the agent created, with value
/// `<kind>/<id>` (see [`owner_value`]). Reconcile deletes only rows it owns.
pub const OWNER_KEY: &str = "dpu-agent/owner";

/// The [`OWNER_KEY`] value for the object `kind`/`id`, e.g. `port/p1`.
pub fn owner_value(kind: &str, id: &str) -> String {
    format!("{kind}/{id}")
}

/// `external_ids` holding only the owner mark.
pub fn owner_external_ids(owner: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(OWNER_KEY.to_owned(), owner.to_owned())])
}

/// The owner mark of a row's `external_ids`, if any.
pub fn owner_of(external_ids: &BTreeMap<String, String>) -> Option<&str> {
    external_ids.get(OWNER_KEY).map(String::as_str)
}

/// Column accessor bound to one row, for error messages.
struct Columns<'a> {
    table: &'static str,
    uuid: Uuid,
    row: &'a Row,
}

impl Columns<'_> {
    fn get<T>(
        &self,
        column: &'static str,
        default: T,
        decode: impl FnOnce(&Datum) -> Result<T, DatumError>,
    ) -> Result<T, RowError> {
        match self.row.get(column) {
            None => Ok(default),
            Some(d) => decode(d).map_err(|reason| RowError {
                table: self.table,
                uuid: self.uuid,
                column,
                reason,
            }),
        }
    }

    fn string(&self, c: &'static str) -> Result<String, RowError> {
        self.get(c, String::new(), Datum::as_string)
    }

    fn opt_string(&self, c: &'static str) -> Result<Option<String>, RowError> {
        self.get(c, None, Datum::as_optional_string)
    }

    fn opt_integer(&self, c: &'static str) -> Result<Option<i64>, RowError> {
        self.get(c, None, Datum::as_optional_integer)
    }

    fn integer(&self, c: &'static str) -> Result<i64, RowError> {
        self.get(c, 0, Datum::as_integer)
    }

    fn uuids(&self, c: &'static str) -> Result<BTreeSet<Uuid>, RowError> {
        self.get(c, BTreeSet::new(), Datum::as_uuid_set)
    }

    fn strings(&self, c: &'static str) -> Result<BTreeSet<String>, RowError> {
        self.get(c, BTreeSet::new(), Datum::as_string_set)
    }

    fn map(&self, c: &'static str) -> Result<BTreeMap<String, String>, RowError> {
        self.get(c, BTreeMap::new(), Datum::as_string_map)
    }
}

/// The root row of the Open_vSwitch table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpenVswitchRow {
    pub uuid: Uuid,
    pub bridges: BTreeSet<Uuid>,
    /// Bumped by clients; ovs-vswitchd copies it to `cur_cfg` once applied.
    pub next_cfg: i64,
    pub cur_cfg: i64,
    pub ovs_version: Option<String>,
    pub other_config: BTreeMap<String, String>,
    pub external_ids: BTreeMap<String, String>,
}

impl OpenVswitchRow {
    pub const COLUMNS: &'static [&'static str] = &[
        "bridges",
        "next_cfg",
        "cur_cfg",
        "ovs_version",
        "other_config",
        "external_ids",
    ];

    pub fn from_row(uuid: Uuid, row: &Row) -> Result<Self, RowError> {
        let c = Columns {
            table: OPEN_VSWITCH_TABLE,
            uuid,
            row,
        };
        Ok(OpenVswitchRow {
            uuid,
            bridges: c.uuids("bridges")?,
            next_cfg: c.integer("next_cfg")?,
            cur_cfg: c.integer("cur_cfg")?,
            ovs_version: c.opt_string("ovs_version")?,
            other_config: c.map("other_config")?,
            external_ids: c.map("external_ids")?,
        })
    }
}

/// A Bridge row.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BridgeRow {
    pub uuid: Uuid,
    pub name: String,
    /// `netdev` for the userspace datapath, `system` (or "") for the kernel's.
    pub datapath_type: String,
    /// `secure` or `standalone`; `None` means standalone.
    pub fail_mode: Option<String>,
    /// e.g. `OpenFlow13`, `OpenFlow14`; empty means OVS's default set.
    pub protocols: BTreeSet<String>,
    pub ports: BTreeSet<Uuid>,
    pub other_config: BTreeMap<String, String>,
    pub external_ids: BTreeMap<String, String>,
}

impl BridgeRow {
    pub const COLUMNS: &'static [&'static str] = &[
        "name",
        "datapath_type",
        "fail_mode",
        "protocols",
        "ports",
        "other_config",
        "external_ids",
    ];

    pub fn from_row(uuid: Uuid, row: &Row) -> Result<Self, RowError> {
        let mut b = Self::settings_from_row(uuid, row)?;
        b.ports = Columns {
            table: BRIDGE_TABLE,
            uuid,
            row,
        }
        .uuids("ports")?;
        Ok(b)
    }

    /// The row without its `ports` column (left empty): the bridge's own
    /// settings, without decoding a set as large as the bridge.
    pub fn settings_from_row(uuid: Uuid, row: &Row) -> Result<Self, RowError> {
        let c = Columns {
            table: BRIDGE_TABLE,
            uuid,
            row,
        };
        Ok(BridgeRow {
            uuid,
            name: c.string("name")?,
            datapath_type: c.string("datapath_type")?,
            fail_mode: c.opt_string("fail_mode")?,
            protocols: c.strings("protocols")?,
            ports: BTreeSet::new(),
            other_config: c.map("other_config")?,
            external_ids: c.map("external_ids")?,
        })
    }
}

/// A Port row.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortRow {
    pub uuid: Uuid,
    pub name: String,
    pub interfaces: BTreeSet<Uuid>,
    /// Access VLAN (0–4095), if any.
    pub tag: Option<i64>,
    pub other_config: BTreeMap<String, String>,
    pub external_ids: BTreeMap<String, String>,
}

impl PortRow {
    pub const COLUMNS: &'static [&'static str] =
        &["name", "interfaces", "tag", "other_config", "external_ids"];

    pub fn from_row(uuid: Uuid, row: &Row) -> Result<Self, RowError> {
        let c = Columns {
            table: PORT_TABLE,
            uuid,
            row,
        };
        Ok(PortRow {
            uuid,
            name: c.string("name")?,
            interfaces: c.uuids("interfaces")?,
            tag: c.opt_integer("tag")?,
            other_config: c.map("other_config")?,
            external_ids: c.map("external_ids")?,
        })
    }
}

/// An Interface row.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InterfaceRow {
    pub uuid: Uuid,
    pub name: String,
    /// `""`/`system`, `internal`, `vxlan`, `geneve`, `patch`, ...
    pub kind: String,
    pub options: BTreeMap<String, String>,
    /// The OpenFlow port number once ovs-vswitchd has the interface; -1 on failure.
    pub ofport: Option<i64>,
    /// Set by ovs-vswitchd when the interface could not be created.
    pub error: Option<String>,
    pub other_config: BTreeMap<String, String>,
    pub external_ids: BTreeMap<String, String>,
}

impl InterfaceRow {
    pub const COLUMNS: &'static [&'static str] = &[
        "name",
        "type",
        "options",
        "ofport",
        "error",
        "other_config",
        "external_ids",
    ];

    pub fn from_row(uuid: Uuid, row: &Row) -> Result<Self, RowError> {
        let c = Columns {
            table: INTERFACE_TABLE,
            uuid,
            row,
        };
        Ok(InterfaceRow {
            uuid,
            name: c.string("name")?,
            kind: c.string("type")?,
            options: c.map("options")?,
            ofport: c.opt_integer("ofport")?,
            error: c.opt_string("error")?,
            other_config: c.map("other_config")?,
            external_ids: c.map("external_ids")?,
        })
    }
}

/// Typed views of a replica that monitors the tables above (see
/// [`super::vswitch::vswitch_monitor`]).
impl Replica {
    pub fn open_vswitch(&self) -> Result<Option<OpenVswitchRow>, RowError> {
        self.table(OPEN_VSWITCH_TABLE)
            .next()
            .map(|(u, r)| OpenVswitchRow::from_row(*u, r))
            .transpose()
    }

    pub fn bridges(&self) -> Result<Vec<BridgeRow>, RowError> {
        self.table(BRIDGE_TABLE)
            .map(|(u, r)| BridgeRow::from_row(*u, r))
            .collect()
    }

    pub fn ports(&self) -> Result<Vec<PortRow>, RowError> {
        self.table(PORT_TABLE)
            .map(|(u, r)| PortRow::from_row(*u, r))
            .collect()
    }

    pub fn interfaces(&self) -> Result<Vec<InterfaceRow>, RowError> {
        self.table(INTERFACE_TABLE)
            .map(|(u, r)| InterfaceRow::from_row(*u, r))
            .collect()
    }

    pub fn bridge_by_name(&self, name: &str) -> Result<Option<BridgeRow>, RowError> {
        Ok(self.bridges()?.into_iter().find(|b| b.name == name))
    }

    /// [`Replica::bridge_by_name`] without the bridge's `ports` (left
    /// empty, see [`BridgeRow::settings_from_row`]). Every bridge row is
    /// still decoded, so that a bad one fails as there.
    pub fn bridge_settings_by_name(&self, name: &str) -> Result<Option<BridgeRow>, RowError> {
        let mut found = None;
        for (u, r) in self.table(BRIDGE_TABLE) {
            let b = BridgeRow::settings_from_row(*u, r)?;
            if found.is_none() && b.name == name {
                found = Some(b);
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::super::atom::Atom;
    use super::*;

    fn row(pairs: &[(&str, Datum)]) -> Row {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn decodes_with_defaults_and_optionals() {
        let u = Uuid::from_u128(7);
        let iface = InterfaceRow::from_row(
            u,
            &row(&[
                ("name", "t1".into()),
                ("type", "vxlan".into()),
                (
                    "options",
                    Datum::map([("remote_ip", "flow"), ("key", "flow")]),
                ),
                ("ofport", Datum::set([3])),
            ]),
        )
        .unwrap();
        assert_eq!(iface.kind, "vxlan");
        assert_eq!(iface.ofport, Some(3));
        assert_eq!(iface.error, None);
        assert!(iface.external_ids.is_empty());

        let bridge = BridgeRow::from_row(u, &row(&[("fail_mode", "secure".into())])).unwrap();
        assert_eq!(bridge.fail_mode.as_deref(), Some("secure"));

        // The settings are the row but for its ports.
        let ports = Datum::set([
            Atom::Uuid(Uuid::from_u128(8)),
            Atom::Uuid(Uuid::from_u128(9)),
        ]);
        let r = row(&[("name", "br-int".into()), ("ports", ports)]);
        let whole = BridgeRow::from_row(u, &r).unwrap();
        assert_eq!(whole.ports.len(), 2);
        let settings = BridgeRow::settings_from_row(u, &r).unwrap();
        assert_eq!(
            settings,
            BridgeRow {
                ports: BTreeSet::new(),
                ..whole
            }
        );
    }

    #[test]
    fn wrong_shape_names_table_row_and_column() {
        let err =
            PortRow::from_row(Uuid::from_u128(1), &row(&[("tag", "ten".into())])).unwrap_err();
        assert_eq!(err.table, "Port");
        assert_eq!(err.column, "tag");
        assert!(
            err.to_string()
                .starts_with("Port row 00000000-0000-0000-0000-000000000001 column tag:")
        );
    }

    #[test]
    fn owner_helpers() {
        let ids = owner_external_ids(&owner_value("port", "p1"));
        assert_eq!(ids[OWNER_KEY], "port/p1");
        assert_eq!(owner_of(&ids), Some("port/p1"));
        assert_eq!(owner_of(&BTreeMap::new()), None);
    }
}
