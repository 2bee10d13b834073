//! The parts of a database schema (RFC 7047 §3.2) the client needs: each
//! column's type, so that update2 diffs are applied correctly (a scalar is
//! replaced, a set is toggled, a map is merged) and bare atoms are normalized.
//!
//! Limits: constraints (enums, ranges, refTable) are not kept; the server
//! enforces them.

use std::collections::BTreeMap;

use serde_json::Value;

/// Why a schema document cannot be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error("schema is missing {0:?}")]
    Missing(&'static str),
    #[error("unknown atomic type {0:?}")]
    UnknownAtomicType(String),
    #[error("column {table}.{column} has an invalid type")]
    InvalidColumn {
        table: String,
        column: String,
        #[source]
        reason: Box<SchemaError>,
    },
}

/// `<atomic-type>` (RFC 7047 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomicType {
    Integer,
    Real,
    Boolean,
    String,
    Uuid,
}

impl AtomicType {
    fn parse(value: &Value) -> Result<Self, SchemaError> {
        // <base-type> is either the atomic type name or {"type": name, ...}.
        let name = match value {
            Value::String(s) => s.as_str(),
            Value::Object(o) => o
                .get("type")
                .and_then(Value::as_str)
                .ok_or(SchemaError::Missing("type"))?,
            other => return Err(SchemaError::UnknownAtomicType(other.to_string())),
        };
        Ok(match name {
            "integer" => AtomicType::Integer,
            "real" => AtomicType::Real,
            "boolean" => AtomicType::Boolean,
            "string" => AtomicType::String,
            "uuid" => AtomicType::Uuid,
            other => return Err(SchemaError::UnknownAtomicType(other.to_owned())),
        })
    }
}

/// `<type>` (RFC 7047 §3.2): key type, optional value type, and bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnType {
    pub key: AtomicType,
    pub value: Option<AtomicType>,
    pub min: u64,
    /// `None` is "unlimited".
    pub max: Option<u64>,
}

impl ColumnType {
    pub fn from_json(value: &Value) -> Result<Self, SchemaError> {
        let Value::Object(obj) = value else {
            return Ok(ColumnType {
                key: AtomicType::parse(value)?,
                value: None,
                min: 1,
                max: Some(1),
            });
        };
        let key = AtomicType::parse(obj.get("key").ok_or(SchemaError::Missing("key"))?)?;
        let value = obj.get("value").map(AtomicType::parse).transpose()?;
        let min = obj.get("min").and_then(Value::as_u64).unwrap_or(1);
        let max = match obj.get("max") {
            None => Some(1),
            Some(Value::String(s)) if s == "unlimited" => None,
            Some(v) => Some(v.as_u64().ok_or(SchemaError::Missing("max"))?),
        };
        Ok(ColumnType {
            key,
            value,
            min,
            max,
        })
    }

    pub fn is_map(&self) -> bool {
        self.value.is_some()
    }

    /// Exactly one atom (min = max = 1, no value type). Everything else,
    /// including optional (0..1) columns, is a set or a map on the wire and in
    /// update2 diffs.
    pub fn is_scalar(&self) -> bool {
        self.value.is_none() && self.min == 1 && self.max == Some(1)
    }
}

/// One table's columns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableSchema {
    pub columns: BTreeMap<String, ColumnType>,
}

/// A database schema as returned by `get_schema`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseSchema {
    pub name: String,
    pub version: Option<String>,
    pub tables: BTreeMap<String, TableSchema>,
}

impl DatabaseSchema {
    pub fn from_json(value: &Value) -> Result<Self, SchemaError> {
        let name = value
            .get("name")
            .and_then(Value::as_str)
            .ok_or(SchemaError::Missing("name"))?
            .to_owned();
        let version = value
            .get("version")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let tables_json = value
            .get("tables")
            .and_then(Value::as_object)
            .ok_or(SchemaError::Missing("tables"))?;
        let mut tables = BTreeMap::new();
        for (table, t) in tables_json {
            let columns_json = t
                .get("columns")
                .and_then(Value::as_object)
                .ok_or(SchemaError::Missing("columns"))?;
            let mut columns = BTreeMap::new();
            for (column, c) in columns_json {
                let ty = c
                    .get("type")
                    .ok_or(SchemaError::Missing("type"))
                    .and_then(ColumnType::from_json)
                    .map_err(|e| SchemaError::InvalidColumn {
                        table: table.clone(),
                        column: column.clone(),
                        reason: Box::new(e),
                    })?;
                columns.insert(column.clone(), ty);
            }
            tables.insert(table.clone(), TableSchema { columns });
        }
        Ok(DatabaseSchema {
            name,
            version,
            tables,
        })
    }

    /// The type of `table.column`; `_uuid` and `_version` are implicit.
    pub fn column(&self, table: &str, column: &str) -> Option<ColumnType> {
        if column == "_uuid" || column == "_version" {
            return Some(ColumnType {
                key: AtomicType::Uuid,
                value: None,
                min: 1,
                max: Some(1),
            });
        }
        self.tables.get(table)?.columns.get(column).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_installed_vswitch_schema_shapes() {
        let schema = DatabaseSchema::from_json(&json!({
            "name": "Open_vSwitch", "version": "8.3.1",
            "tables": {"Port": {"columns": {
                "name": {"type": "string", "mutable": false},
                "tag": {"type": {"key": {"type": "integer", "minInteger": 0, "maxInteger": 4095},
                                 "min": 0, "max": 1}},
                "interfaces": {"type": {"key": {"type": "uuid", "refTable": "Interface"},
                                        "min": 1, "max": "unlimited"}},
                "external_ids": {"type": {"key": "string", "value": "string",
                                          "min": 0, "max": "unlimited"}}
            }}}
        }))
        .unwrap();
        assert!(schema.column("Port", "name").unwrap().is_scalar());
        let tag = schema.column("Port", "tag").unwrap();
        assert!(!tag.is_scalar() && !tag.is_map());
        assert_eq!(schema.column("Port", "interfaces").unwrap().max, None);
        assert!(schema.column("Port", "external_ids").unwrap().is_map());
        assert!(schema.column("Port", "_uuid").unwrap().is_scalar());
        assert!(schema.column("Port", "nope").is_none());
    }

    #[test]
    fn rejects_bad_types() {
        assert_eq!(
            ColumnType::from_json(&json!("blob")),
            Err(SchemaError::UnknownAtomicType("blob".into()))
        );
        assert!(DatabaseSchema::from_json(&json!({"name": "x"})).is_err());
    }
}
