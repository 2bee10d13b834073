//! OVSDB values: atoms, sets and maps (RFC 7047 §5.1), with typed helpers.
//!
//! On the wire a set of one element may be sent as the bare atom; with the
//! column's type ([`ColumnType`]) [`Datum::from_json_typed`] normalizes that so
//! a set column is always a [`Datum::Set`]. Sets and maps are kept sorted
//! (`BTreeSet`/`BTreeMap`), which makes comparisons and diffs cheap.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde_json::{Value, json};

use super::schema::{AtomicType, ColumnType};

/// Why a JSON value is not the OVSDB value expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DatumError {
    #[error("invalid UUID {0:?}")]
    InvalidUuid(String),
    #[error("JSON value {0} is not an OVSDB atom")]
    NotAnAtom(String),
    #[error("JSON value {0} is not an OVSDB value")]
    NotADatum(String),
    #[error("expected {expected}, found {found}")]
    WrongType {
        expected: &'static str,
        found: String,
    },
}

/// A 128-bit OVSDB row identifier, printed in the usual 8-4-4-4-12 form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Uuid(u128);

impl Uuid {
    /// The all-zero UUID (`monitor_cond_since`'s "no transaction").
    pub const ZERO: Uuid = Uuid(0);

    pub fn from_u128(value: u128) -> Self {
        Uuid(value)
    }

    pub fn as_u128(self) -> u128 {
        self.0
    }
}

impl FromStr for Uuid {
    type Err = DatumError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DatumError::InvalidUuid(s.to_owned());
        let b = s.as_bytes();
        if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
            return Err(bad());
        }
        let mut value: u128 = 0;
        for (i, &c) in b.iter().enumerate() {
            if [8, 13, 18, 23].contains(&i) {
                continue;
            }
            let digit = (c as char).to_digit(16).ok_or_else(bad)?;
            value = (value << 4) | u128::from(digit);
        }
        Ok(Uuid(value))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = format!("{:032x}", self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uuid({self})")
    }
}

/// One scalar OVSDB value.
#[derive(Debug, Clone)]
pub enum Atom {
    Integer(i64),
    Real(f64),
    Boolean(bool),
    String(String),
    Uuid(Uuid),
    /// A reference to a row inserted earlier in the same transaction
    /// (`["named-uuid", <id>]`, RFC 7047 §5.1). Only valid in requests.
    NamedUuid(String),
}

impl Atom {
    /// A `["named-uuid", name]` reference.
    pub fn named(name: impl Into<String>) -> Self {
        Atom::NamedUuid(name.into())
    }

    fn rank(&self) -> u8 {
        match self {
            Atom::Integer(_) => 0,
            Atom::Real(_) => 1,
            Atom::Boolean(_) => 2,
            Atom::String(_) => 3,
            Atom::Uuid(_) => 4,
            Atom::NamedUuid(_) => 5,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Atom::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Atom::Integer(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Atom::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_uuid(&self) -> Option<Uuid> {
        match self {
            Atom::Uuid(u) => Some(*u),
            _ => None,
        }
    }

    /// Decodes an atom without knowing its column type.
    pub fn from_json(value: &Value) -> Result<Self, DatumError> {
        match value {
            Value::String(s) => Ok(Atom::String(s.clone())),
            Value::Bool(b) => Ok(Atom::Boolean(*b)),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Ok(Atom::Integer(i)),
                None => n
                    .as_f64()
                    .map(Atom::Real)
                    .ok_or_else(|| DatumError::NotAnAtom(value.to_string())),
            },
            Value::Array(a) => match (a.first().and_then(Value::as_str), a.get(1), a.len()) {
                (Some("uuid"), Some(Value::String(s)), 2) => Ok(Atom::Uuid(s.parse()?)),
                (Some("named-uuid"), Some(Value::String(s)), 2) => Ok(Atom::NamedUuid(s.clone())),
                _ => Err(DatumError::NotAnAtom(value.to_string())),
            },
            _ => Err(DatumError::NotAnAtom(value.to_string())),
        }
    }

    fn from_json_typed(value: &Value, ty: AtomicType) -> Result<Self, DatumError> {
        let atom = Atom::from_json(value)?;
        Ok(match (atom, ty) {
            // JSON has one number type: 1 in a real column is the real 1.0.
            (Atom::Integer(i), AtomicType::Real) => Atom::Real(i as f64),
            (atom, _) => atom,
        })
    }

    pub fn to_json(&self) -> Value {
        match self {
            Atom::Integer(i) => json!(i),
            Atom::Real(r) => json!(r),
            Atom::Boolean(b) => json!(b),
            Atom::String(s) => json!(s),
            Atom::Uuid(u) => json!(["uuid", u.to_string()]),
            Atom::NamedUuid(n) => json!(["named-uuid", n]),
        }
    }
}

impl PartialEq for Atom {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for Atom {}

impl PartialOrd for Atom {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Atom {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            (Atom::Integer(a), Atom::Integer(b)) => a.cmp(b),
            (Atom::Real(a), Atom::Real(b)) => a.total_cmp(b),
            (Atom::Boolean(a), Atom::Boolean(b)) => a.cmp(b),
            (Atom::String(a), Atom::String(b)) => a.cmp(b),
            (Atom::Uuid(a), Atom::Uuid(b)) => a.cmp(b),
            (Atom::NamedUuid(a), Atom::NamedUuid(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl From<&str> for Atom {
    fn from(s: &str) -> Self {
        Atom::String(s.to_owned())
    }
}

impl From<String> for Atom {
    fn from(s: String) -> Self {
        Atom::String(s)
    }
}

impl From<&String> for Atom {
    fn from(s: &String) -> Self {
        Atom::String(s.clone())
    }
}

impl From<i64> for Atom {
    fn from(i: i64) -> Self {
        Atom::Integer(i)
    }
}

impl From<bool> for Atom {
    fn from(b: bool) -> Self {
        Atom::Boolean(b)
    }
}

impl From<f64> for Atom {
    fn from(r: f64) -> Self {
        Atom::Real(r)
    }
}

impl From<Uuid> for Atom {
    fn from(u: Uuid) -> Self {
        Atom::Uuid(u)
    }
}

/// A column value: an atom, a set of atoms or a map between atoms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    Atom(Atom),
    Set(BTreeSet<Atom>),
    Map(BTreeMap<Atom, Atom>),
}

impl Datum {
    /// `["set", []]`: the value of an optional column that is absent.
    pub fn empty_set() -> Self {
        Datum::Set(BTreeSet::new())
    }

    /// `["map", []]`.
    pub fn empty_map() -> Self {
        Datum::Map(BTreeMap::new())
    }

    pub fn set<A: Into<Atom>>(items: impl IntoIterator<Item = A>) -> Self {
        Datum::Set(items.into_iter().map(Into::into).collect())
    }

    pub fn map<K: Into<Atom>, V: Into<Atom>>(items: impl IntoIterator<Item = (K, V)>) -> Self {
        Datum::Map(
            items
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// An optional column: empty set for `None`, one element otherwise.
    pub fn optional<A: Into<Atom>>(value: Option<A>) -> Self {
        Datum::set(value)
    }

    /// Decodes a value without its column type (a bare atom stays an atom).
    pub fn from_json(value: &Value) -> Result<Self, DatumError> {
        if let Value::Array(a) = value {
            match (a.first().and_then(Value::as_str), a.get(1), a.len()) {
                (Some("set"), Some(Value::Array(items)), 2) => {
                    return items
                        .iter()
                        .map(Atom::from_json)
                        .collect::<Result<_, _>>()
                        .map(Datum::Set);
                }
                (Some("map"), Some(Value::Array(pairs)), 2) => {
                    return pairs
                        .iter()
                        .map(|pair| match pair {
                            Value::Array(kv) if kv.len() == 2 => {
                                Ok((Atom::from_json(&kv[0])?, Atom::from_json(&kv[1])?))
                            }
                            _ => Err(DatumError::NotADatum(value.to_string())),
                        })
                        .collect::<Result<_, _>>()
                        .map(Datum::Map);
                }
                _ => {}
            }
        }
        Atom::from_json(value)
            .map(Datum::Atom)
            .map_err(|_| DatumError::NotADatum(value.to_string()))
    }

    /// Decodes a value of a column of type `ty`, normalizing set columns to
    /// [`Datum::Set`] and map columns to [`Datum::Map`].
    pub fn from_json_typed(value: &Value, ty: &ColumnType) -> Result<Self, DatumError> {
        let datum = match Datum::from_json(value)? {
            Datum::Atom(_) => Datum::Atom(Atom::from_json_typed(value, ty.key)?),
            Datum::Set(set) if ty.key == AtomicType::Real => Datum::Set(
                set.into_iter()
                    .map(|a| match a {
                        Atom::Integer(i) => Atom::Real(i as f64),
                        a => a,
                    })
                    .collect(),
            ),
            other => other,
        };
        Ok(match datum {
            Datum::Atom(atom) if ty.is_map() => {
                return Err(DatumError::WrongType {
                    expected: "map",
                    found: atom.to_json().to_string(),
                });
            }
            Datum::Atom(atom) if !ty.is_scalar() => Datum::Set(BTreeSet::from([atom])),
            // An empty set is how OVSDB writes an empty map in some replies.
            Datum::Set(set) if ty.is_map() && set.is_empty() => Datum::empty_map(),
            other => other,
        })
    }

    /// The default value of a column: what `initial`/`insert` updates omit.
    pub fn default_for(ty: &ColumnType) -> Self {
        if ty.is_map() {
            Datum::empty_map()
        } else if !ty.is_scalar() {
            Datum::empty_set()
        } else {
            Datum::Atom(match ty.key {
                AtomicType::Integer => Atom::Integer(0),
                AtomicType::Real => Atom::Real(0.0),
                AtomicType::Boolean => Atom::Boolean(false),
                AtomicType::String => Atom::String(String::new()),
                AtomicType::Uuid => Atom::Uuid(Uuid::ZERO),
            })
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            Datum::Atom(a) => a.to_json(),
            Datum::Set(s) => json!(["set", s.iter().map(Atom::to_json).collect::<Vec<_>>()]),
            Datum::Map(m) => json!([
                "map",
                m.iter()
                    .map(|(k, v)| json!([k.to_json(), v.to_json()]))
                    .collect::<Vec<_>>()
            ]),
        }
    }

    /// The atoms of a set (a bare atom counts as a set of one).
    pub fn atoms(&self) -> Result<Vec<&Atom>, DatumError> {
        match self {
            Datum::Atom(a) => Ok(vec![a]),
            Datum::Set(s) => Ok(s.iter().collect()),
            Datum::Map(_) => Err(self.wrong("set")),
        }
    }

    fn wrong(&self, expected: &'static str) -> DatumError {
        DatumError::WrongType {
            expected,
            found: self.to_json().to_string(),
        }
    }

    fn single(&self, expected: &'static str) -> Result<&Atom, DatumError> {
        match self.atoms()?.as_slice() {
            [a] => Ok(a),
            _ => Err(self.wrong(expected)),
        }
    }

    fn optional_atom(&self, expected: &'static str) -> Result<Option<&Atom>, DatumError> {
        match self.atoms()?.as_slice() {
            [] => Ok(None),
            [a] => Ok(Some(a)),
            _ => Err(self.wrong(expected)),
        }
    }

    pub fn as_string(&self) -> Result<String, DatumError> {
        let a = self.single("string")?;
        a.as_str()
            .map(str::to_owned)
            .ok_or_else(|| self.wrong("string"))
    }

    pub fn as_integer(&self) -> Result<i64, DatumError> {
        let a = self.single("integer")?;
        a.as_integer().ok_or_else(|| self.wrong("integer"))
    }

    pub fn as_bool(&self) -> Result<bool, DatumError> {
        let a = self.single("boolean")?;
        a.as_bool().ok_or_else(|| self.wrong("boolean"))
    }

    pub fn as_uuid(&self) -> Result<Uuid, DatumError> {
        let a = self.single("uuid")?;
        a.as_uuid().ok_or_else(|| self.wrong("uuid"))
    }

    pub fn as_optional_string(&self) -> Result<Option<String>, DatumError> {
        match self.optional_atom("optional string")? {
            None => Ok(None),
            Some(a) => a
                .as_str()
                .map(|s| Some(s.to_owned()))
                .ok_or_else(|| self.wrong("optional string")),
        }
    }

    pub fn as_optional_integer(&self) -> Result<Option<i64>, DatumError> {
        match self.optional_atom("optional integer")? {
            None => Ok(None),
            Some(a) => a
                .as_integer()
                .map(Some)
                .ok_or_else(|| self.wrong("optional integer")),
        }
    }

    pub fn as_uuid_set(&self) -> Result<BTreeSet<Uuid>, DatumError> {
        self.atoms()?
            .into_iter()
            .map(|a| a.as_uuid().ok_or_else(|| self.wrong("set of uuid")))
            .collect()
    }

    pub fn as_string_set(&self) -> Result<BTreeSet<String>, DatumError> {
        self.atoms()?
            .into_iter()
            .map(|a| {
                a.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| self.wrong("set of string"))
            })
            .collect()
    }

    pub fn as_string_map(&self) -> Result<BTreeMap<String, String>, DatumError> {
        match self {
            Datum::Map(m) => m
                .iter()
                .map(|(k, v)| match (k.as_str(), v.as_str()) {
                    (Some(k), Some(v)) => Ok((k.to_owned(), v.to_owned())),
                    _ => Err(self.wrong("map of string to string")),
                })
                .collect(),
            Datum::Set(s) if s.is_empty() => Ok(BTreeMap::new()),
            _ => Err(self.wrong("map of string to string")),
        }
    }
}

impl<T: Into<Atom>> From<T> for Datum {
    fn from(value: T) -> Self {
        Datum::Atom(value.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovsdb::schema::ColumnType;

    const U: &str = "36bd2c6e-9e6f-4f07-8d38-7f1b1d0e7a01";

    /// RFC 7047 §5.1 notation: `["uuid", ...]`, `["named-uuid", ...]`,
    /// `["set", [...]]`, `["map", [[k, v], ...]]`.
    #[test]
    fn rfc7047_5_1_notation_round_trips() {
        for text in [
            format!(r#"["uuid","{U}"]"#),
            r#"["named-uuid","row1"]"#.to_owned(),
            r#"["set",[1,2,3]]"#.to_owned(),
            r#"["map",[["a","b"],["c","d"]]]"#.to_owned(),
            r#""plain""#.to_owned(),
            "true".to_owned(),
            "2.5".to_owned(),
        ] {
            let value: Value = serde_json::from_str(&text).unwrap();
            let datum = Datum::from_json(&value).unwrap();
            assert_eq!(datum.to_json(), value, "{text}");
        }
    }

    #[test]
    fn uuid_parse_and_print() {
        let u: Uuid = U.parse().unwrap();
        assert_eq!(u.to_string(), U);
        assert!(
            "36bd2c6e-9e6f-4f07-8d38-7f1b1d0e7a0"
                .parse::<Uuid>()
                .is_err()
        );
        assert!(
            "36bd2c6e_9e6f-4f07-8d38-7f1b1d0e7a01"
                .parse::<Uuid>()
                .is_err()
        );
        assert!(
            "zzbd2c6e-9e6f-4f07-8d38-7f1b1d0e7a01"
                .parse::<Uuid>()
                .is_err()
        );
        assert_eq!(
            Uuid::ZERO.to_string(),
            "00000000-0000-0000-0000-000000000000"
        );
    }

    #[test]
    fn typed_decoding_normalizes_sets_and_maps() {
        let optional_int = ColumnType::from_json(&json!(
            {"key": {"type": "integer", "minInteger": 0, "maxInteger": 4095}, "min": 0, "max": 1}
        ))
        .unwrap();
        assert_eq!(
            Datum::from_json_typed(&json!(7), &optional_int).unwrap(),
            Datum::set([7])
        );
        assert_eq!(
            Datum::from_json_typed(&json!(["set", []]), &optional_int)
                .unwrap()
                .as_optional_integer()
                .unwrap(),
            None
        );
        let string_map = ColumnType::from_json(
            &json!({"key": "string", "value": "string", "min": 0, "max": "unlimited"}),
        )
        .unwrap();
        assert_eq!(
            Datum::from_json_typed(&json!(["set", []]), &string_map).unwrap(),
            Datum::empty_map()
        );
        assert!(Datum::from_json_typed(&json!("x"), &string_map).is_err());
        let real = ColumnType::from_json(&json!("real")).unwrap();
        assert_eq!(
            Datum::from_json_typed(&json!(1), &real).unwrap(),
            Datum::Atom(Atom::Real(1.0))
        );
    }

    #[test]
    fn typed_helpers() {
        let d = Datum::map([("remote_ip", "flow"), ("key", "flow")]);
        assert_eq!(d.as_string_map().unwrap()["key"], "flow");
        assert!(d.as_string().is_err());
        assert_eq!(Datum::from("x").as_string().unwrap(), "x");
        assert_eq!(Datum::set(["x"]).as_string().unwrap(), "x");
        assert_eq!(Datum::empty_set().as_optional_string().unwrap(), None);
        let err = Datum::set([1, 2]).as_optional_integer().unwrap_err();
        assert!(err.to_string().contains("optional integer"), "{err}");
        let u: Uuid = U.parse().unwrap();
        assert_eq!(Datum::set([u]).as_uuid_set().unwrap(), BTreeSet::from([u]));
    }

    #[test]
    fn malformed_values_are_errors_not_panics() {
        for text in [
            r#"["uuid"]"#,
            r#"["uuid",1]"#,
            r#"["set",[["set",[]]]]"#,
            r#"["map",[[1]]]"#,
            r#"["map",[1,2]]"#,
            "null",
            "{}",
            r#"["bogus",1]"#,
        ] {
            let value: Value = serde_json::from_str(text).unwrap();
            assert!(Datum::from_json(&value).is_err(), "{text}");
        }
    }
}
