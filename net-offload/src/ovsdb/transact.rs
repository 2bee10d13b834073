//! The `transact` method (RFC 7047 §4.1.3) and its operations (§5.2): a typed
//! builder for requests and typed decoding of replies and per-operation errors.
//!
//! A transaction is atomic: either every operation applies or none does. When an
//! operation fails, the reply holds its error at the operation's index and the
//! later results are null; when all operations succeed but the commit fails
//! (e.g. a referential-integrity or index violation) the reply has one extra
//! element holding that error. Both become a [`TransactError`].

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value, json};

use super::atom::{Atom, Datum, DatumError, Uuid};
use super::schema::DatabaseSchema;

/// A row: column name → value. Columns not named keep their default
/// (insert) or their current value (update).
pub type Row = BTreeMap<String, Datum>;

/// Why a transaction failed or its reply cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransactError {
    /// The server refused one operation; nothing was committed.
    #[error("operation {index} ({op}) failed: {error}{}", details.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Operation {
        index: usize,
        op: String,
        error: String,
        details: Option<String>,
    },
    /// Every operation ran but the commit failed; nothing was committed.
    #[error("transaction did not commit: {error}{}", details.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Commit {
        error: String,
        details: Option<String>,
    },
    #[error("transact reply is not an array")]
    NotAnArray,
    #[error("transact reply has {got} results for {sent} operations")]
    ResultCount { sent: usize, got: usize },
    #[error("result {index} ({op}) is malformed")]
    MalformedResult {
        index: usize,
        op: String,
        #[source]
        reason: ResultError,
    },
}

/// What is wrong with one operation's result in a transact reply.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResultError {
    /// A member the operation's result must have is absent or of the wrong
    /// JSON type.
    #[error("no \"{member}\" {what}")]
    Missing {
        member: &'static str,
        what: &'static str,
    },
    #[error("\"uuid\" is not a UUID")]
    BadUuid(#[source] DatumError),
    #[error("\"uuid\" is {0}")]
    NotAUuid(String),
    #[error("a selected row does not decode")]
    BadRow(#[source] DatumError),
}

/// `<function>` of a condition (RFC 7047 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Less,
    LessOrEqual,
    Equal,
    NotEqual,
    GreaterOrEqual,
    Greater,
    Includes,
    Excludes,
}

impl Function {
    pub fn as_str(self) -> &'static str {
        match self {
            Function::Less => "<",
            Function::LessOrEqual => "<=",
            Function::Equal => "==",
            Function::NotEqual => "!=",
            Function::GreaterOrEqual => ">=",
            Function::Greater => ">",
            Function::Includes => "includes",
            Function::Excludes => "excludes",
        }
    }
}

/// `[<column>, <function>, <value>]` (RFC 7047 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub column: String,
    pub function: Function,
    pub value: Datum,
}

impl Condition {
    pub fn new(column: impl Into<String>, function: Function, value: impl Into<Datum>) -> Self {
        Condition {
            column: column.into(),
            function,
            value: value.into(),
        }
    }

    /// `column == value`.
    pub fn eq(column: impl Into<String>, value: impl Into<Datum>) -> Self {
        Self::new(column, Function::Equal, value)
    }

    /// `column != value`.
    pub fn ne(column: impl Into<String>, value: impl Into<Datum>) -> Self {
        Self::new(column, Function::NotEqual, value)
    }

    /// `column includes value`.
    pub fn includes(column: impl Into<String>, value: impl Into<Datum>) -> Self {
        Self::new(column, Function::Includes, value)
    }

    /// `_uuid == uuid`: exactly that row.
    pub fn uuid(uuid: Uuid) -> Self {
        Self::eq("_uuid", uuid)
    }

    fn to_json(&self) -> Value {
        json!([self.column, self.function.as_str(), self.value.to_json()])
    }
}

/// `<mutator>` (RFC 7047 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutator {
    Add,
    Subtract,
    Multiply,
    Divide,
    Modulo,
    Insert,
    Delete,
}

impl Mutator {
    pub fn as_str(self) -> &'static str {
        match self {
            Mutator::Add => "+=",
            Mutator::Subtract => "-=",
            Mutator::Multiply => "*=",
            Mutator::Divide => "/=",
            Mutator::Modulo => "%=",
            Mutator::Insert => "insert",
            Mutator::Delete => "delete",
        }
    }
}

/// `[<column>, <mutator>, <value>]` (RFC 7047 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutation {
    pub column: String,
    pub mutator: Mutator,
    pub value: Datum,
}

impl Mutation {
    pub fn new(column: impl Into<String>, mutator: Mutator, value: impl Into<Datum>) -> Self {
        Mutation {
            column: column.into(),
            mutator,
            value: value.into(),
        }
    }

    /// Adds elements to a set or pairs to a map (existing keys are kept).
    pub fn insert(column: impl Into<String>, value: Datum) -> Self {
        Self::new(column, Mutator::Insert, value)
    }

    /// Removes elements from a set, or from a map: pairs (map value) or keys
    /// (set value).
    pub fn delete(column: impl Into<String>, value: Datum) -> Self {
        Self::new(column, Mutator::Delete, value)
    }

    /// `column += n` on an integer column.
    pub fn add(column: impl Into<String>, n: i64) -> Self {
        Self::new(column, Mutator::Add, n)
    }

    fn to_json(&self) -> Value {
        json!([self.column, self.mutator.as_str(), self.value.to_json()])
    }
}

/// `"until"` of a wait operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitUntil {
    /// The selected rows equal `rows`.
    Equal,
    /// The selected rows differ from `rows`.
    NotEqual,
}

/// One database operation (RFC 7047 §5.2).
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    Insert {
        table: String,
        row: Row,
        uuid_name: Option<String>,
    },
    Select {
        table: String,
        conditions: Vec<Condition>,
        columns: Option<Vec<String>>,
    },
    Update {
        table: String,
        conditions: Vec<Condition>,
        row: Row,
    },
    Mutate {
        table: String,
        conditions: Vec<Condition>,
        mutations: Vec<Mutation>,
    },
    Delete {
        table: String,
        conditions: Vec<Condition>,
    },
    Wait {
        table: String,
        conditions: Vec<Condition>,
        columns: Vec<String>,
        until: WaitUntil,
        rows: Vec<Row>,
        timeout_ms: Option<u64>,
    },
    Commit {
        durable: bool,
    },
    Abort,
    Comment(String),
    Assert {
        lock: String,
    },
}

fn row_json(row: &Row) -> Value {
    Value::Object(
        row.iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect::<Map<_, _>>(),
    )
}

fn conditions_json(conditions: &[Condition]) -> Value {
    Value::Array(conditions.iter().map(Condition::to_json).collect())
}

impl Operation {
    /// The operation as it goes on the wire.
    pub fn to_json(&self) -> Value {
        match self {
            Operation::Insert {
                table,
                row,
                uuid_name,
            } => {
                let mut op = json!({"op": "insert", "table": table, "row": row_json(row)});
                if let (Some(name), Value::Object(obj)) = (uuid_name, &mut op) {
                    obj.insert("uuid-name".into(), json!(name));
                }
                op
            }
            Operation::Select {
                table,
                conditions,
                columns,
            } => {
                let mut op =
                    json!({"op": "select", "table": table, "where": conditions_json(conditions)});
                if let (Some(columns), Value::Object(obj)) = (columns, &mut op) {
                    obj.insert("columns".into(), json!(columns));
                }
                op
            }
            Operation::Update {
                table,
                conditions,
                row,
            } => json!({"op": "update", "table": table, "where": conditions_json(conditions),
                        "row": row_json(row)}),
            Operation::Mutate {
                table,
                conditions,
                mutations,
            } => json!({"op": "mutate", "table": table, "where": conditions_json(conditions),
                        "mutations": mutations.iter().map(Mutation::to_json).collect::<Vec<_>>()}),
            Operation::Delete { table, conditions } => {
                json!({"op": "delete", "table": table, "where": conditions_json(conditions)})
            }
            Operation::Wait {
                table,
                conditions,
                columns,
                until,
                rows,
                timeout_ms,
            } => {
                let until = match until {
                    WaitUntil::Equal => "==",
                    WaitUntil::NotEqual => "!=",
                };
                let mut op = json!({"op": "wait", "table": table,
                    "where": conditions_json(conditions), "columns": columns, "until": until,
                    "rows": rows.iter().map(row_json).collect::<Vec<_>>()});
                if let (Some(ms), Value::Object(obj)) = (timeout_ms, &mut op) {
                    obj.insert("timeout".into(), json!(ms));
                }
                op
            }
            Operation::Commit { durable } => json!({"op": "commit", "durable": durable}),
            Operation::Abort => json!({"op": "abort"}),
            Operation::Comment(text) => json!({"op": "comment", "comment": text}),
            Operation::Assert { lock } => json!({"op": "assert", "lock": lock}),
        }
    }

    /// A short description for error messages, e.g. `insert into Port`.
    pub fn describe(&self) -> String {
        match self {
            Operation::Insert { table, .. } => format!("insert into {table}"),
            Operation::Select { table, .. } => format!("select from {table}"),
            Operation::Update { table, .. } => format!("update {table}"),
            Operation::Mutate { table, .. } => format!("mutate {table}"),
            Operation::Delete { table, .. } => format!("delete from {table}"),
            Operation::Wait { table, .. } => format!("wait on {table}"),
            Operation::Commit { .. } => "commit".into(),
            Operation::Abort => "abort".into(),
            Operation::Comment(_) => "comment".into(),
            Operation::Assert { lock } => format!("assert lock {lock}"),
        }
    }
}

/// The index of an operation in its transaction, to find its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpIndex(pub usize);

/// A row inserted by this transaction: its operation index and `uuid-name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inserted {
    pub index: OpIndex,
    pub uuid_name: String,
}

impl Inserted {
    /// `["named-uuid", uuid_name]`: refers to the new row elsewhere in the
    /// same transaction (e.g. in a Port's `interfaces`).
    pub fn reference(&self) -> Atom {
        Atom::NamedUuid(self.uuid_name.clone())
    }
}

/// A transaction on one database, built operation by operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    db: String,
    ops: Vec<Operation>,
    next_name: usize,
}

impl Transaction {
    pub fn new(db: impl Into<String>) -> Self {
        Transaction {
            db: db.into(),
            ops: Vec::new(),
            next_name: 0,
        }
    }

    pub fn db(&self) -> &str {
        &self.db
    }

    pub fn operations(&self) -> &[Operation] {
        &self.ops
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Appends any operation.
    pub fn push(&mut self, op: Operation) -> OpIndex {
        self.ops.push(op);
        OpIndex(self.ops.len() - 1)
    }

    /// Inserts a row under a generated `uuid-name` (`row0`, `row1`, ...).
    pub fn insert(&mut self, table: impl Into<String>, row: Row) -> Inserted {
        let name = format!("row{}", self.next_name);
        self.next_name += 1;
        self.insert_named(table, name, row)
    }

    /// Inserts a row under the caller's `uuid-name` (`[a-zA-Z_][a-zA-Z0-9_]*`).
    pub fn insert_named(
        &mut self,
        table: impl Into<String>,
        uuid_name: impl Into<String>,
        row: Row,
    ) -> Inserted {
        let uuid_name = uuid_name.into();
        let index = self.push(Operation::Insert {
            table: table.into(),
            row,
            uuid_name: Some(uuid_name.clone()),
        });
        Inserted { index, uuid_name }
    }

    /// Selects `columns` (all if `None`) of the rows matching every condition.
    pub fn select(
        &mut self,
        table: impl Into<String>,
        conditions: Vec<Condition>,
        columns: Option<&[&str]>,
    ) -> OpIndex {
        self.push(Operation::Select {
            table: table.into(),
            conditions,
            columns: columns.map(|c| c.iter().map(|s| (*s).to_owned()).collect()),
        })
    }

    pub fn update(
        &mut self,
        table: impl Into<String>,
        conditions: Vec<Condition>,
        row: Row,
    ) -> OpIndex {
        self.push(Operation::Update {
            table: table.into(),
            conditions,
            row,
        })
    }

    pub fn mutate(
        &mut self,
        table: impl Into<String>,
        conditions: Vec<Condition>,
        mutations: Vec<Mutation>,
    ) -> OpIndex {
        self.push(Operation::Mutate {
            table: table.into(),
            conditions,
            mutations,
        })
    }

    pub fn delete(&mut self, table: impl Into<String>, conditions: Vec<Condition>) -> OpIndex {
        self.push(Operation::Delete {
            table: table.into(),
            conditions,
        })
    }

    /// Waits (up to `timeout_ms`, forever if `None`) until the `columns` of
    /// the matching rows are (`Equal`) or are not (`NotEqual`) exactly `rows`.
    /// With `timeout_ms = Some(0)` this is an optimistic-concurrency check.
    pub fn wait(
        &mut self,
        table: impl Into<String>,
        conditions: Vec<Condition>,
        columns: &[&str],
        until: WaitUntil,
        rows: Vec<Row>,
        timeout_ms: Option<u64>,
    ) -> OpIndex {
        self.push(Operation::Wait {
            table: table.into(),
            conditions,
            columns: columns.iter().map(|s| (*s).to_owned()).collect(),
            until,
            rows,
            timeout_ms,
        })
    }

    pub fn commit(&mut self, durable: bool) -> OpIndex {
        self.push(Operation::Commit { durable })
    }

    pub fn abort(&mut self) -> OpIndex {
        self.push(Operation::Abort)
    }

    /// A comment the server writes to its log with the transaction.
    pub fn comment(&mut self, text: impl Into<String>) -> OpIndex {
        self.push(Operation::Comment(text.into()))
    }

    pub fn assert_lock(&mut self, lock: impl Into<String>) -> OpIndex {
        self.push(Operation::Assert { lock: lock.into() })
    }

    /// The `params` of the transact request: `[<db-name>, <operation>*]`.
    pub fn to_params(&self) -> Value {
        let mut params = Vec::with_capacity(self.ops.len() + 1);
        params.push(json!(self.db));
        params.extend(self.ops.iter().map(Operation::to_json));
        Value::Array(params)
    }

    /// Decodes the `result` of the transact reply. With the schema, selected
    /// rows are normalized by column type.
    pub fn decode_reply(
        &self,
        result: &Value,
        schema: Option<&DatabaseSchema>,
    ) -> Result<TransactReply, TransactError> {
        let Value::Array(items) = result else {
            return Err(TransactError::NotAnArray);
        };
        if items.len() < self.ops.len() {
            return Err(TransactError::ResultCount {
                sent: self.ops.len(),
                got: items.len(),
            });
        }
        // The first error is the cause; later results are null.
        for (index, item) in items.iter().enumerate() {
            if let Some(error) = item.get("error") {
                let error = error.as_str().unwrap_or("unknown error").to_owned();
                let details = item
                    .get("details")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                return Err(match self.ops.get(index) {
                    Some(op) => TransactError::Operation {
                        index,
                        op: op.describe(),
                        error,
                        details,
                    },
                    None => TransactError::Commit { error, details },
                });
            }
        }
        let results = self
            .ops
            .iter()
            .zip(items)
            .enumerate()
            .map(|(index, (op, item))| {
                decode_result(op, item, schema).map_err(|reason| TransactError::MalformedResult {
                    index,
                    op: op.describe(),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TransactReply { results })
    }
}

fn decode_result(
    op: &Operation,
    item: &Value,
    schema: Option<&DatabaseSchema>,
) -> Result<OperationResult, ResultError> {
    let missing = |member, what| ResultError::Missing { member, what };
    match op {
        Operation::Insert { .. } => {
            let uuid = item.get("uuid").ok_or(missing("uuid", "member"))?;
            match Atom::from_json(uuid).map_err(ResultError::BadUuid)? {
                Atom::Uuid(u) => Ok(OperationResult::Inserted(u)),
                other => Err(ResultError::NotAUuid(other.to_json().to_string())),
            }
        }
        Operation::Select { table, .. } => {
            let rows = item
                .get("rows")
                .and_then(Value::as_array)
                .ok_or(missing("rows", "array"))?;
            rows.iter()
                .map(|r| decode_row(table, r, schema).map_err(ResultError::BadRow))
                .collect::<Result<_, _>>()
                .map(OperationResult::Rows)
        }
        Operation::Update { .. } | Operation::Mutate { .. } | Operation::Delete { .. } => item
            .get("count")
            .and_then(Value::as_u64)
            .map(OperationResult::Count)
            .ok_or(missing("count", "number")),
        _ => Ok(OperationResult::Done),
    }
}

/// Decodes a `<row>` object of `table`.
pub fn decode_row(
    table: &str,
    value: &Value,
    schema: Option<&DatabaseSchema>,
) -> Result<Row, DatumError> {
    let Value::Object(obj) = value else {
        return Err(DatumError::NotADatum(value.to_string()));
    };
    obj.iter()
        .map(|(column, v)| {
            let datum = match schema.and_then(|s| s.column(table, column)) {
                Some(ty) => Datum::from_json_typed(v, &ty)?,
                None => Datum::from_json(v)?,
            };
            Ok((column.clone(), datum))
        })
        .collect()
}

/// The result of one successful operation.
#[derive(Debug, Clone, PartialEq)]
pub enum OperationResult {
    /// insert: the new row's UUID.
    Inserted(Uuid),
    /// select: the matching rows.
    Rows(Vec<Row>),
    /// update, mutate, delete: the number of rows matched.
    Count(u64),
    /// wait, commit, comment, assert.
    Done,
}

/// The results of a committed transaction, one per operation.
#[derive(Debug, Clone, PartialEq)]
pub struct TransactReply {
    pub results: Vec<OperationResult>,
}

impl TransactReply {
    /// The UUID the server gave to an inserted row.
    pub fn uuid(&self, inserted: &Inserted) -> Option<Uuid> {
        match self.results.get(inserted.index.0) {
            Some(OperationResult::Inserted(u)) => Some(*u),
            _ => None,
        }
    }

    /// The rows of a select (empty for any other operation).
    pub fn rows(&self, index: OpIndex) -> &[Row] {
        match self.results.get(index.0) {
            Some(OperationResult::Rows(rows)) => rows,
            _ => &[],
        }
    }

    /// The row count of an update, mutate or delete.
    pub fn count(&self, index: OpIndex) -> Option<u64> {
        match self.results.get(index.0) {
            Some(OperationResult::Count(n)) => Some(*n),
            _ => None,
        }
    }
}

impl fmt::Display for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "transaction on {} with {} operations",
            self.db,
            self.ops.len()
        )
    }
}

#[cfg(test)]
mod tests {
    //! Vectors follow the request grammar of RFC 7047 §5.1 (notation for
    //! conditions, mutations, atoms) and §5.2.1–§5.2.11 (one object shape per
    //! operation), filled in with values from the Open_vSwitch schema. The
    //! RFC gives templates, not literal examples, so each vector names the
    //! section whose template it instantiates. Comparison is of parsed JSON,
    //! which is exact but independent of member order.

    use super::*;

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    fn row(pairs: &[(&str, Datum)]) -> Row {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    const U1: &str = "3c2a3b5e-0000-4000-8000-000000000001";

    /// RFC 7047 §4.1.3 (Transact) request params and §5.2.1 (Insert) with
    /// `uuid-name`, referenced by `named-uuid` (§5.1) from §5.2.4 (Mutate).
    #[test]
    fn insert_with_named_uuid_and_mutate() {
        let mut txn = Transaction::new("Open_vSwitch");
        let iface = txn.insert(
            "Interface",
            row(&[("name", "p1".into()), ("type", "internal".into())]),
        );
        let port = txn.insert_named(
            "Port",
            "port_p1",
            row(&[
                ("name", "p1".into()),
                ("interfaces", Datum::set([iface.reference()])),
                ("external_ids", Datum::map([("dpu-agent/owner", "port/p1")])),
            ]),
        );
        txn.mutate(
            "Bridge",
            vec![Condition::eq("name", "br-int")],
            vec![Mutation::insert("ports", Datum::set([port.reference()]))],
        );
        assert_eq!(
            txn.to_params(),
            parse(
                r#"["Open_vSwitch",
                {"op":"insert","table":"Interface","row":{"name":"p1","type":"internal"},"uuid-name":"row0"},
                {"op":"insert","table":"Port","uuid-name":"port_p1","row":{"name":"p1",
                  "interfaces":["set",[["named-uuid","row0"]]],
                  "external_ids":["map",[["dpu-agent/owner","port/p1"]]]}},
                {"op":"mutate","table":"Bridge","where":[["name","==","br-int"]],
                  "mutations":[["ports","insert",["set",[["named-uuid","port_p1"]]]]]}]"#
            )
        );
    }

    /// RFC 7047 §5.2.2 (Select) with and without `columns`, and §5.2.5 (Delete)
    /// with a `_uuid` condition (§5.1 `<uuid>`).
    #[test]
    fn select_and_delete() {
        let mut txn = Transaction::new("Open_vSwitch");
        txn.select("Bridge", vec![], Some(&["name", "ports"]));
        txn.select(
            "Port",
            vec![Condition::new("tag", Function::GreaterOrEqual, 10)],
            None,
        );
        txn.delete("Port", vec![Condition::uuid(U1.parse().unwrap())]);
        assert_eq!(
            txn.to_params(),
            parse(&format!(
                r#"["Open_vSwitch",
                {{"op":"select","table":"Bridge","where":[],"columns":["name","ports"]}},
                {{"op":"select","table":"Port","where":[["tag",">=",10]]}},
                {{"op":"delete","table":"Port","where":[["_uuid","==",["uuid","{U1}"]]]}}]"#
            ))
        );
    }

    /// RFC 7047 §5.2.3 (Update) and §5.1 mutators `+=`, `delete` on a map by keys.
    #[test]
    fn update_and_mutators() {
        let mut txn = Transaction::new("Open_vSwitch");
        txn.update(
            "Bridge",
            vec![Condition::eq("name", "br-int")],
            row(&[
                ("fail_mode", Datum::set(["secure"])),
                ("protocols", Datum::set(["OpenFlow13", "OpenFlow14"])),
            ]),
        );
        txn.mutate(
            "Open_vSwitch",
            vec![],
            vec![
                Mutation::add("next_cfg", 1),
                Mutation::delete("external_ids", Datum::set(["stale"])),
            ],
        );
        assert_eq!(
            txn.to_params(),
            parse(
                r#"["Open_vSwitch",
                {"op":"update","table":"Bridge","where":[["name","==","br-int"]],
                 "row":{"fail_mode":["set",["secure"]],"protocols":["set",["OpenFlow13","OpenFlow14"]]}},
                {"op":"mutate","table":"Open_vSwitch","where":[],
                 "mutations":[["next_cfg","+=",1],["external_ids","delete",["set",["stale"]]]]}]"#
            )
        );
    }

    /// RFC 7047 §5.2.6 (Wait), §5.2.7 (Commit), §5.2.8 (Abort), §5.2.9
    /// (Comment), §5.2.10 (Assert).
    #[test]
    fn wait_commit_abort_comment_assert() {
        let mut txn = Transaction::new("Open_vSwitch");
        txn.wait(
            "Bridge",
            vec![Condition::eq("name", "br-int")],
            &["name"],
            WaitUntil::NotEqual,
            vec![],
            Some(0),
        );
        txn.wait(
            "Bridge",
            vec![],
            &["fail_mode"],
            WaitUntil::Equal,
            vec![row(&[("fail_mode", Datum::set(["secure"]))])],
            None,
        );
        txn.commit(true);
        txn.abort();
        txn.comment("dpu-agent: reconcile network n1");
        txn.assert_lock("dpu-agent");
        assert_eq!(
            txn.to_params(),
            parse(
                r#"["Open_vSwitch",
                {"op":"wait","timeout":0,"table":"Bridge","where":[["name","==","br-int"]],
                 "columns":["name"],"until":"!=","rows":[]},
                {"op":"wait","table":"Bridge","where":[],"columns":["fail_mode"],"until":"==",
                 "rows":[{"fail_mode":["set",["secure"]]}]},
                {"op":"commit","durable":true},
                {"op":"abort"},
                {"op":"comment","comment":"dpu-agent: reconcile network n1"},
                {"op":"assert","lock":"dpu-agent"}]"#
            )
        );
    }

    /// RFC 7047 §4.1.3: result shapes per operation (§5.2.x "result" members).
    #[test]
    fn decode_successful_reply() {
        let mut txn = Transaction::new("Open_vSwitch");
        let ins = txn.insert("Bridge", row(&[("name", "br0".into())]));
        let sel = txn.select("Bridge", vec![], Some(&["_uuid", "name"]));
        let upd = txn.update("Bridge", vec![], Row::new());
        txn.comment("x");
        let reply = txn
            .decode_reply(
                &parse(&format!(
                    r#"[{{"uuid":["uuid","{U1}"]}},
                       {{"rows":[{{"_uuid":["uuid","{U1}"],"name":"br0"}}]}},
                       {{"count":1}},{{}}]"#
                )),
                None,
            )
            .unwrap();
        assert_eq!(reply.uuid(&ins), Some(U1.parse().unwrap()));
        assert_eq!(reply.rows(sel)[0]["name"], Datum::from("br0"));
        assert_eq!(reply.count(upd), Some(1));
    }

    /// RFC 7047 §4.1.3: an operation error names its index; later results are
    /// null. One extra element is a commit error.
    #[test]
    fn decode_errors() {
        let mut txn = Transaction::new("Open_vSwitch");
        txn.comment("first");
        txn.insert("Port", Row::new());
        txn.comment("third");
        let err = txn
            .decode_reply(
                &parse(r#"[{},{"error":"constraint violation","details":"no name"},null]"#),
                None,
            )
            .unwrap_err();
        assert_eq!(
            err,
            TransactError::Operation {
                index: 1,
                op: "insert into Port".into(),
                error: "constraint violation".into(),
                details: Some("no name".into()),
            }
        );
        assert_eq!(
            err.to_string(),
            "operation 1 (insert into Port) failed: constraint violation: no name"
        );
        let err = txn
            .decode_reply(
                &parse(
                    r#"[{},{"uuid":["uuid","3c2a3b5e-0000-4000-8000-000000000001"]},{},
                          {"error":"referential integrity violation"}]"#,
                ),
                None,
            )
            .unwrap_err();
        assert!(
            matches!(err, TransactError::Commit { ref error, .. } if error == "referential integrity violation")
        );
        assert_eq!(
            txn.decode_reply(&parse("[{}]"), None).unwrap_err(),
            TransactError::ResultCount { sent: 3, got: 1 }
        );
        // The cause is typed (the datum error under "uuid"), reachable as
        // the error's source rather than flattened into its message.
        let err = txn
            .decode_reply(&parse(r#"[{},{"uuid":["uuid","nope"]},{}]"#), None)
            .unwrap_err();
        assert!(
            matches!(
                &err,
                TransactError::MalformedResult {
                    index: 1,
                    reason: ResultError::BadUuid(DatumError::InvalidUuid(_)),
                    ..
                }
            ),
            "{err:?}"
        );
        let source = std::error::Error::source(&err).expect("typed source");
        assert_eq!(source.to_string(), "\"uuid\" is not a UUID");
        assert!(source.source().is_some());
        assert!(matches!(
            txn.decode_reply(&parse(r#"[{},{"uuid":"nope"},{}]"#), None),
            Err(TransactError::MalformedResult {
                reason: ResultError::NotAUuid(_),
                ..
            })
        ));
        assert!(matches!(
            txn.decode_reply(&parse(r#"[{},{},{}]"#), None),
            Err(TransactError::MalformedResult {
                index: 1,
                reason: ResultError::Missing { member: "uuid", .. },
                ..
            })
        ));
    }
}
