//! A local replica of chosen tables and columns, kept current by
//! `monitor_cond` / `monitor_cond_since` (ovsdb-server(7) §4.1.12–§4.1.16).
//!
//! Updates are decoded completely before any is applied, so a malformed
//! notification leaves the replica as it was (and the connection is reset,
//! which resyncs it). `modify` diffs are applied by column type: a column of at
//! most one element (scalar or optional) carries its new value and is replaced
//! (ovsdb-server's `n_max == 1` rule, confirmed against OVS 3.1 by the
//! integration tests); a set toggles the listed elements; a map adds, replaces
//! or (same value) removes the listed pairs.
//!
//! Limits: conditions are always `true` (whole tables); one monitor per client.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};

use super::atom::{Datum, DatumError, Uuid};
use super::schema::DatabaseSchema;
use super::transact::Row;

/// Why a monitor reply or notification cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MonitorError {
    #[error("table-updates is not an object")]
    NotAnObject,
    #[error("row {uuid:?} of table {table} has an invalid update")]
    BadRowUpdate {
        table: String,
        uuid: String,
        #[source]
        reason: RowUpdateError,
    },
    #[error("monitor_cond_since reply is not [found, last-txn-id, updates]")]
    BadSinceReply,
    #[error("table {0} is not in the database schema")]
    UnknownTable(String),
}

/// What is wrong with one row's `<row-update>`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RowUpdateError {
    #[error("the row's key is not a UUID")]
    BadUuid(#[source] DatumError),
    #[error("not an object")]
    NotAnObject,
    #[error("row is not an object")]
    RowNotAnObject,
    #[error("column {column}")]
    Column {
        column: String,
        #[source]
        source: DatumError,
    },
    #[error("none of initial/insert/modify/delete")]
    NoUpdate,
}

/// Which tables and columns to replicate from one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorSpec {
    pub db: String,
    /// Table → columns (`None`: every column).
    pub tables: BTreeMap<String, Option<Vec<String>>>,
}

impl MonitorSpec {
    pub fn new(db: impl Into<String>) -> Self {
        MonitorSpec {
            db: db.into(),
            tables: BTreeMap::new(),
        }
    }

    /// Replicates `columns` of `table`.
    pub fn table(mut self, table: impl Into<String>, columns: &[&str]) -> Self {
        self.tables.insert(
            table.into(),
            Some(columns.iter().map(|c| (*c).to_owned()).collect()),
        );
        self
    }

    /// Replicates every column of `table`.
    pub fn table_all_columns(mut self, table: impl Into<String>) -> Self {
        self.tables.insert(table.into(), None);
        self
    }

    /// `<monitor-cond-requests>`: `{table: [{"columns": [...]}]}`.
    pub fn requests_json(&self) -> Value {
        let mut obj = Map::new();
        for (table, columns) in &self.tables {
            let request = match columns {
                Some(c) => json!([{ "columns": c }]),
                None => json!([{}]),
            };
            obj.insert(table.clone(), request);
        }
        Value::Object(obj)
    }

    /// Every monitored table exists in `schema`.
    pub fn check(&self, schema: &DatabaseSchema) -> Result<(), MonitorError> {
        match self.tables.keys().find(|t| !schema.tables.contains_key(*t)) {
            Some(t) => Err(MonitorError::UnknownTable(t.clone())),
            None => Ok(()),
        }
    }

    fn columns<'a>(&'a self, table: &str, schema: &'a DatabaseSchema) -> Vec<&'a str> {
        match self.tables.get(table) {
            Some(Some(cols)) => cols.iter().map(String::as_str).collect(),
            _ => schema
                .tables
                .get(table)
                .map(|t| t.columns.keys().map(String::as_str).collect())
                .unwrap_or_default(),
        }
    }
}

/// One decoded `<row-update2>`.
#[derive(Debug, Clone, PartialEq)]
enum RowUpdate {
    /// `initial` or `insert`: the row, default-valued columns omitted.
    Insert(Row),
    /// `modify`: per-column diffs.
    Modify(Row),
    Delete,
}

/// A decoded `<table-updates2>`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TableUpdates {
    updates: Vec<(String, Uuid, RowUpdate)>,
}

impl TableUpdates {
    /// Decodes `<table-updates2>` with the database schema.
    pub fn decode(value: &Value, schema: &DatabaseSchema) -> Result<Self, MonitorError> {
        let tables = value.as_object().ok_or(MonitorError::NotAnObject)?;
        let mut updates = Vec::new();
        for (table, rows) in tables {
            let rows = rows.as_object().ok_or(MonitorError::NotAnObject)?;
            for (uuid_text, update) in rows {
                let bad = |reason: RowUpdateError| MonitorError::BadRowUpdate {
                    table: table.clone(),
                    uuid: uuid_text.clone(),
                    reason,
                };
                let uuid: Uuid = uuid_text
                    .parse()
                    .map_err(|e: DatumError| bad(RowUpdateError::BadUuid(e)))?;
                let obj = update
                    .as_object()
                    .ok_or_else(|| bad(RowUpdateError::NotAnObject))?;
                let decode = |row: &Value| -> Result<Row, MonitorError> {
                    let row = row
                        .as_object()
                        .ok_or_else(|| bad(RowUpdateError::RowNotAnObject))?;
                    row.iter()
                        .map(|(col, v)| {
                            let datum = match schema.column(table, col) {
                                Some(ty) => Datum::from_json_typed(v, &ty),
                                None => Datum::from_json(v),
                            }
                            .map_err(|source| {
                                bad(RowUpdateError::Column {
                                    column: col.clone(),
                                    source,
                                })
                            })?;
                            Ok((col.clone(), datum))
                        })
                        .collect()
                };
                let row_update = if let Some(row) = obj.get("initial").or(obj.get("insert")) {
                    RowUpdate::Insert(decode(row)?)
                } else if let Some(row) = obj.get("modify") {
                    RowUpdate::Modify(decode(row)?)
                } else if obj.contains_key("delete") {
                    RowUpdate::Delete
                } else {
                    return Err(bad(RowUpdateError::NoUpdate));
                };
                updates.push((table.clone(), uuid, row_update));
            }
        }
        Ok(TableUpdates { updates })
    }

    pub fn is_empty(&self) -> bool {
        self.updates.is_empty()
    }

    pub fn len(&self) -> usize {
        self.updates.len()
    }
}

/// Decodes a `monitor_cond_since` result `[found, last-txn-id, updates]`.
pub fn decode_since_reply(
    value: &Value,
    schema: &DatabaseSchema,
) -> Result<(bool, Uuid, TableUpdates), MonitorError> {
    match value.as_array().map(Vec::as_slice) {
        Some([Value::Bool(found), Value::String(txn), updates]) => {
            let txn = txn.parse().map_err(|_| MonitorError::BadSinceReply)?;
            Ok((*found, txn, TableUpdates::decode(updates, schema)?))
        }
        _ => Err(MonitorError::BadSinceReply),
    }
}

/// How many row changes a [`Replica`] remembers for
/// [`Replica::changed_since`]; older ones are forgotten (a reader that far
/// behind reads everything again).
pub const CHANGE_LOG_MAX: usize = 4096;

/// Where a [`Replica`]'s changes stood when it was read: handed back to
/// [`Replica::changed_since`], it asks which rows changed after. It names the
/// replica instance too, so a cursor of a replica that was replaced (a
/// resync after a reconnect) is never taken for one of its successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaCursor {
    replica: u64,
    seq: u64,
}

/// The rows changed since a [`ReplicaCursor`], per table: inserted,
/// modified or deleted (the replica's current rows tell which: a row it no
/// longer has was deleted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangedRows {
    tables: BTreeMap<String, BTreeSet<Uuid>>,
}

/// The empty set [`ChangedRows::table`] answers for a table without changes.
static NO_ROWS: BTreeSet<Uuid> = BTreeSet::new();

impl ChangedRows {
    /// The uuids of `table`'s changed rows.
    pub fn table(&self, table: &str) -> &BTreeSet<Uuid> {
        self.tables.get(table).unwrap_or(&NO_ROWS)
    }

    /// How many rows changed, over all tables.
    pub fn len(&self) -> usize {
        self.tables.values().map(BTreeSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

/// Source of replica instance ids (see [`ReplicaCursor`]).
static NEXT_REPLICA: AtomicU64 = AtomicU64::new(1);

/// The bounded log of a [`Replica`]'s row changes: one sequence number per
/// [`Replica::apply`], each changed row logged with it.
struct ChangeLog {
    /// This replica instance (a clone or a fresh replica gets a new one).
    replica: u64,
    /// The sequence number of the last apply.
    seq: u64,
    /// Changes of sequence numbers up to this one may have been dropped.
    floor: u64,
    /// At most `max` entries, oldest first.
    entries: VecDeque<(u64, String, Uuid)>,
    max: usize,
}

impl Default for ChangeLog {
    fn default() -> Self {
        ChangeLog {
            replica: NEXT_REPLICA.fetch_add(1, Ordering::Relaxed),
            seq: 0,
            floor: 0,
            entries: VecDeque::new(),
            max: CHANGE_LOG_MAX,
        }
    }
}

impl std::fmt::Debug for ChangeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeLog")
            .field("replica", &self.replica)
            .field("seq", &self.seq)
            .field("floor", &self.floor)
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl ChangeLog {
    fn push(&mut self, table: String, uuid: Uuid) {
        self.entries.push_back((self.seq, table, uuid));
        while self.entries.len() > self.max {
            if let Some((seq, _, _)) = self.entries.pop_front() {
                self.floor = self.floor.max(seq);
            }
        }
    }
}

/// The in-memory copy of the monitored tables, with a bounded log of which
/// rows changed ([`Replica::cursor`], [`Replica::changed_since`]).
#[derive(Debug, Default)]
pub struct Replica {
    tables: BTreeMap<String, BTreeMap<Uuid, Row>>,
    changes: ChangeLog,
}

/// A clone is a new replica instance: cursors of the original do not apply
/// to it (each may change on its own from here).
impl Clone for Replica {
    fn clone(&self) -> Self {
        Replica {
            tables: self.tables.clone(),
            changes: ChangeLog::default(),
        }
    }
}

/// Replicas are equal when they hold the same rows.
impl PartialEq for Replica {
    fn eq(&self, other: &Self) -> bool {
        self.tables == other.tables
    }
}

impl Replica {
    /// Where the replica's changes stand now.
    pub fn cursor(&self) -> ReplicaCursor {
        ReplicaCursor {
            replica: self.changes.replica,
            seq: self.changes.seq,
        }
    }

    /// The rows changed since `cursor` was taken, or `None` when the replica
    /// cannot tell: the cursor is of another replica instance (this one
    /// replaced it in a resync), or the changes since were more than
    /// [`CHANGE_LOG_MAX`]. `None` means "anything may have changed".
    pub fn changed_since(&self, cursor: ReplicaCursor) -> Option<ChangedRows> {
        let log = &self.changes;
        if cursor.replica != log.replica || cursor.seq < log.floor || cursor.seq > log.seq {
            return None;
        }
        let mut changed = ChangedRows::default();
        for (_, table, uuid) in log.entries.iter().rev().take_while(|e| e.0 > cursor.seq) {
            changed
                .tables
                .entry(table.clone())
                .or_default()
                .insert(*uuid);
        }
        Some(changed)
    }

    /// Keeps at most `max` row changes (tests make it overflow).
    #[cfg(test)]
    pub(crate) fn limit_change_log(&mut self, max: usize) {
        self.changes.max = max;
    }

    /// The rows of `table` (empty if not monitored or no rows).
    pub fn table(&self, table: &str) -> impl Iterator<Item = (&Uuid, &Row)> {
        self.tables.get(table).into_iter().flat_map(|t| t.iter())
    }

    pub fn row(&self, table: &str, uuid: &Uuid) -> Option<&Row> {
        self.tables.get(table)?.get(uuid)
    }

    pub fn len(&self, table: &str) -> usize {
        self.tables.get(table).map_or(0, BTreeMap::len)
    }

    pub fn is_empty(&self) -> bool {
        self.tables.values().all(BTreeMap::is_empty)
    }

    /// Applies decoded updates. Rows are stored with every monitored column,
    /// omitted ones at their default value.
    /// Every row updated is logged as changed under a new sequence number.
    pub fn apply(&mut self, updates: TableUpdates, spec: &MonitorSpec, schema: &DatabaseSchema) {
        self.changes.seq += 1;
        for (table, uuid, update) in updates.updates {
            let rows = self.tables.entry(table.clone()).or_default();
            match update {
                RowUpdate::Insert(mut row) => {
                    for col in spec.columns(&table, schema) {
                        if let (false, Some(ty)) =
                            (row.contains_key(col), schema.column(&table, col))
                        {
                            row.insert(col.to_owned(), Datum::default_for(&ty));
                        }
                    }
                    rows.insert(uuid, row);
                }
                RowUpdate::Delete => {
                    rows.remove(&uuid);
                }
                RowUpdate::Modify(diff) => {
                    // A modify of an unknown row means we missed its insert; the
                    // diff alone is the best we have until the next resync.
                    let row = rows.entry(uuid).or_default();
                    for (col, change) in diff {
                        let ty = schema.column(&table, &col);
                        let old = row
                            .remove(&col)
                            .or_else(|| ty.as_ref().map(Datum::default_for));
                        let replace = ty.as_ref().is_none_or(|t| t.max == Some(1));
                        let new = match (old, change) {
                            (_, change) if replace => change,
                            (Some(Datum::Set(mut old)), Datum::Set(change)) => {
                                for atom in change {
                                    if !old.remove(&atom) {
                                        old.insert(atom);
                                    }
                                }
                                Datum::Set(old)
                            }
                            (Some(Datum::Map(mut old)), Datum::Map(change)) => {
                                for (k, v) in change {
                                    if old.get(&k) == Some(&v) {
                                        old.remove(&k);
                                    } else {
                                        old.insert(k, v);
                                    }
                                }
                                Datum::Map(old)
                            }
                            (_, change) => change,
                        };
                        row.insert(col, new);
                    }
                }
            }
            self.changes.push(table, uuid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> DatabaseSchema {
        DatabaseSchema::from_json(&json!({
            "name": "Open_vSwitch",
            "tables": {"Port": {"columns": {
                "name": {"type": "string"},
                "tag": {"type": {"key": "integer", "min": 0, "max": 1}},
                "trunks": {"type": {"key": "integer", "min": 0, "max": 4096}},
                "external_ids": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}}
            }}}
        }))
        .unwrap()
    }

    const U: &str = "11111111-2222-3333-4444-555555555555";

    fn apply(replica: &mut Replica, updates: Value) {
        let schema = schema();
        let spec = MonitorSpec::new("Open_vSwitch").table_all_columns("Port");
        let updates = TableUpdates::decode(&updates, &schema).unwrap();
        replica.apply(updates, &spec, &schema);
    }

    /// ovsdb-server(7) §4.1.14 (update2): initial, modify by type, delete.
    #[test]
    fn update2_semantics() {
        let mut replica = Replica::default();
        apply(
            &mut replica,
            json!({"Port": {U: {"initial": {"name": "p1", "trunks": ["set", [1, 2]],
                "external_ids": ["map", [["a", "1"], ["b", "2"]]]}}}}),
        );
        let uuid: Uuid = U.parse().unwrap();
        let row = replica.row("Port", &uuid).unwrap();
        assert_eq!(
            row["tag"],
            Datum::empty_set(),
            "omitted column gets its default"
        );
        assert_eq!(row["trunks"], Datum::set([1, 2]));

        apply(
            &mut replica,
            json!({"Port": {U: {"modify": {"name": "p2", "tag": 7, "trunks": ["set", [2, 3]],
                "external_ids": ["map", [["a", "1"], ["b", "3"], ["c", "4"]]]}}}}),
        );
        let row = replica.row("Port", &uuid).unwrap();
        assert_eq!(row["name"], Datum::from("p2"));
        assert_eq!(row["tag"], Datum::set([7]));
        assert_eq!(row["trunks"], Datum::set([1, 3]));
        assert_eq!(row["external_ids"], Datum::map([("b", "3"), ("c", "4")]));

        // An optional column carries its new value, here "none".
        apply(
            &mut replica,
            json!({"Port": {U: {"modify": {"tag": ["set", []]}}}}),
        );
        assert_eq!(
            replica.row("Port", &uuid).unwrap()["tag"],
            Datum::empty_set()
        );

        apply(&mut replica, json!({"Port": {U: {"delete": null}}}));
        assert_eq!(replica.len("Port"), 0);
    }

    /// The change log: rows changed since a cursor, and "cannot tell" for a
    /// cursor of another instance or one older than the log keeps.
    #[test]
    fn change_log_tells_rows_changed_since_a_cursor() {
        const V: &str = "11111111-2222-3333-4444-666666666666";
        let (u, v): (Uuid, Uuid) = (U.parse().unwrap(), V.parse().unwrap());
        let mut replica = Replica::default();
        let start = replica.cursor();
        assert_eq!(replica.changed_since(start), Some(ChangedRows::default()));
        apply(
            &mut replica,
            json!({"Port": {U: {"insert": {"name": "p1"}}, V: {"insert": {"name": "p2"}}}}),
        );
        let inserted = replica.cursor();
        apply(&mut replica, json!({"Port": {U: {"modify": {"tag": 3}}}}));
        apply(&mut replica, json!({"Port": {V: {"delete": null}}}));
        let since_start = replica.changed_since(start).unwrap();
        assert_eq!(since_start.table("Port"), &BTreeSet::from([u, v]));
        assert_eq!(since_start.len(), 2);
        assert!(since_start.table("Interface").is_empty());
        assert_eq!(
            replica.changed_since(inserted).unwrap().table("Port"),
            &BTreeSet::from([u, v])
        );
        assert!(replica.changed_since(replica.cursor()).unwrap().is_empty());

        // A clone (as a fresh replica after a resync) is another instance.
        let copy = replica.clone();
        assert_eq!(copy, replica);
        assert_eq!(copy.changed_since(replica.cursor()), None);
        assert_eq!(Replica::default().changed_since(start), None);

        // Past the bound, older cursors get "cannot tell".
        replica.limit_change_log(2);
        let recent = replica.cursor();
        for tag in 0..3 {
            apply(&mut replica, json!({"Port": {U: {"modify": {"tag": tag}}}}));
        }
        assert_eq!(replica.changed_since(start), None);
        assert_eq!(replica.changed_since(recent), None);
        let last = replica.cursor();
        apply(
            &mut replica,
            json!({"Port": {V: {"insert": {"name": "p3"}}}}),
        );
        assert_eq!(
            replica.changed_since(last).unwrap().table("Port"),
            &BTreeSet::from([v])
        );
    }

    #[test]
    fn malformed_updates_are_rejected_whole() {
        let schema = schema();
        for bad in [
            json!([]),
            json!({"Port": []}),
            json!({"Port": {"not-a-uuid": {"delete": null}}}),
            json!({"Port": {U: {"frobnicate": {}}}}),
            json!({"Port": {U: {"insert": {"tag": "x", "external_ids": "y"}}}}),
        ] {
            assert!(TableUpdates::decode(&bad, &schema).is_err(), "{bad}");
        }
    }

    #[test]
    fn since_reply_and_requests() {
        let (found, txn, updates) = decode_since_reply(
            &json!([false, "00000000-0000-0000-0000-000000000000", {}]),
            &schema(),
        )
        .unwrap();
        assert!(!found && txn == Uuid::ZERO && updates.is_empty());
        assert!(decode_since_reply(&json!({}), &schema()).is_err());
        let spec = MonitorSpec::new("Open_vSwitch")
            .table("Port", &["name"])
            .table_all_columns("Interface");
        assert_eq!(
            spec.requests_json(),
            json!({"Port": [{"columns": ["name"]}], "Interface": [{}]})
        );
        assert_eq!(
            spec.check(&schema()),
            Err(MonitorError::UnknownTable("Interface".into()))
        );
    }
}
