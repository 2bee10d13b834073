//! What `dpuctl apply` and `dpuctl plan` read: YAML or JSON, several YAML
//! documents separated by `---`, each a single object `{kind, id, tenant?,
//! spec}` or a batch `{objects: [...], prune?: {tenant}}`. `kind` may be the
//! envelope name (`IpsecTunnel`), the path (`ipsec-tunnels`) or a loose
//! spelling (`ipsec-tunnel`). What `dpuctl get -o yaml` prints is accepted
//! back: the server-owned `generation` and `status` are dropped.

use std::fmt;

use dpu_api::Kind;
use dpu_api::object::{ApplyRequest, ObjectWrite, Prune};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Where an object of the request came from, to explain an error that names
/// `objects[N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub source: String,
    /// 1-based document number within the source.
    pub document: usize,
    pub kind: Kind,
    pub id: String,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} ({}, document {})",
            self.kind.path(),
            self.id,
            self.source,
            self.document
        )
    }
}

/// An input that is not a valid apply document; nothing was sent. Its
/// [`DocumentProblem`] is the source (printed after it by the error chain).
#[derive(Debug, thiserror::Error)]
#[error("{source_name}, document {document}")]
pub struct DocumentError {
    pub source_name: String,
    pub document: usize,
    #[source]
    pub problem: DocumentProblem,
}

/// What is wrong with one document.
#[derive(Debug, thiserror::Error)]
pub enum DocumentProblem {
    /// Not YAML (or JSON).
    #[error(transparent)]
    Syntax(#[from] serde_yaml::Error),
    #[error("expected an object {{kind, id, tenant, spec}} or {{objects: [...]}}, found {found}")]
    NotAnObject { found: &'static str },
    #[error("prune: {0} (expected {{tenant: NAME}})")]
    Prune(serde_json::Error),
    #[error("prune is asked for two tenants, {first:?} and {second:?}; apply one tenant at a time")]
    TwoPruneTenants { first: String, second: String },
    #[error("unknown field {field:?} next to objects (expected objects and prune)")]
    UnknownBatchField { field: String },
    #[error("objects must be a list")]
    ObjectsNotAList,
    #[error("objects[{index}] must be an object")]
    ItemNotAnObject { index: usize },
    /// `objects[index]` of a batch is not a valid object.
    #[error("objects[{index}]")]
    Item {
        index: usize,
        #[source]
        problem: Box<DocumentProblem>,
    },
    #[error("unknown kind {kind:?}; kinds are {}", kind_list())]
    UnknownKind { kind: String },
    #[error("kind must be a string")]
    KindNotAString,
    #[error("missing kind (one of {})", kind_list())]
    MissingKind,
    /// The envelope `{kind, id, tenant, spec}` does not decode.
    #[error(transparent)]
    Object(#[from] serde_json::Error),
}

/// The apply request being built from one or more inputs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Documents {
    pub request: ApplyRequest,
    /// One per object of `request.objects`, in the same order.
    pub origins: Vec<Origin>,
}

impl Documents {
    /// Adds every document of `text`, read from `source_name` (a file name
    /// or `-`).
    pub fn add(&mut self, source_name: &str, text: &str) -> Result<(), DocumentError> {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let document = i + 1;
            let err = |problem: DocumentProblem| DocumentError {
                source_name: source_name.to_string(),
                document,
                problem,
            };
            let value = Value::deserialize(doc).map_err(|e| err(e.into()))?;
            match value {
                // An empty document, e.g. before a leading `---`.
                Value::Null => {}
                Value::Object(map) if map.contains_key("objects") => {
                    self.add_batch(map).map_err(err)?;
                    for _ in self.origins.len()..self.request.objects.len() {
                        let o = &self.request.objects[self.origins.len()];
                        self.origins.push(origin(source_name, document, o));
                    }
                }
                Value::Object(map) => {
                    let o = object_write(map).map_err(err)?;
                    self.origins.push(origin(source_name, document, &o));
                    self.request.objects.push(o);
                }
                other => {
                    return Err(err(DocumentProblem::NotAnObject {
                        found: json_type(&other),
                    }));
                }
            }
        }
        Ok(())
    }

    fn add_batch(&mut self, mut map: Map<String, Value>) -> Result<(), DocumentProblem> {
        let objects = map.remove("objects").unwrap_or(Value::Null);
        if let Some(prune) = map.remove("prune") {
            let prune: Prune = serde_json::from_value(prune).map_err(DocumentProblem::Prune)?;
            self.set_prune(&prune.tenant)?;
        }
        if let Some(key) = map.keys().next() {
            return Err(DocumentProblem::UnknownBatchField { field: key.clone() });
        }
        let Value::Array(items) = objects else {
            return Err(DocumentProblem::ObjectsNotAList);
        };
        for (index, item) in items.into_iter().enumerate() {
            let Value::Object(obj) = item else {
                return Err(DocumentProblem::ItemNotAnObject { index });
            };
            let o = object_write(obj).map_err(|problem| DocumentProblem::Item {
                index,
                problem: Box::new(problem),
            })?;
            self.request.objects.push(o);
        }
        Ok(())
    }

    /// Prunes `tenant`'s objects not listed; two different tenants are an
    /// error.
    pub fn set_prune(&mut self, tenant: &str) -> Result<(), DocumentProblem> {
        match &self.request.prune {
            Some(p) if p.tenant != tenant => Err(DocumentProblem::TwoPruneTenants {
                first: p.tenant.clone(),
                second: tenant.to_string(),
            }),
            _ => {
                self.request.prune = Some(Prune {
                    tenant: tenant.to_string(),
                });
                Ok(())
            }
        }
    }

    /// The origin of `objects[N]` when `field` starts with it.
    pub fn origin_of_field(&self, field: &str) -> Option<&Origin> {
        let rest = field.strip_prefix("objects[")?;
        let index: usize = rest.split(']').next()?.parse().ok()?;
        self.origins.get(index)
    }
}

fn origin(source_name: &str, document: usize, o: &ObjectWrite) -> Origin {
    Origin {
        source: source_name.to_string(),
        document,
        // object_write only keeps kinds that parse.
        kind: Kind::parse_loose(&o.kind).unwrap_or(Kind::Tenant),
        id: o.id.clone(),
    }
}

/// One object of a document, with `kind` normalised to the envelope name.
fn object_write(mut map: Map<String, Value>) -> Result<ObjectWrite, DocumentProblem> {
    // What `get -o yaml|json` prints can be applied back.
    map.remove("generation");
    map.remove("status");
    let kind = match map.get("kind") {
        Some(Value::String(k)) => {
            Kind::parse_loose(k).ok_or_else(|| DocumentProblem::UnknownKind { kind: k.clone() })?
        }
        Some(_) => return Err(DocumentProblem::KindNotAString),
        None => return Err(DocumentProblem::MissingKind),
    };
    map.insert("kind".into(), Value::String(kind.name().to_string()));
    Ok(serde_json::from_value(Value::Object(map))?)
}

fn kind_list() -> String {
    Kind::ALL
        .iter()
        .map(|k| k.path())
        .collect::<Vec<_>>()
        .join(", ")
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Result<Documents, DocumentError> {
        let mut d = Documents::default();
        d.add("in.yaml", text)?;
        Ok(d)
    }

    #[test]
    fn several_yaml_documents_and_batches() {
        let d = parse(
            "---\nkind: Tenant\nid: acme\nspec: {}\n---\n\
             objects:\n  - kind: networks\n    id: n1\n    tenant: acme\n    spec: {vni: 5, cidr: 10.0.0.0/24, encap: vxlan}\n  \
             - {kind: ipsec-tunnel, id: t1, tenant: acme, spec: {}}\n\
             prune: {tenant: acme}\n---\n",
        )
        .unwrap();
        let kinds: Vec<_> = d.request.objects.iter().map(|o| o.kind.as_str()).collect();
        assert_eq!(kinds, ["Tenant", "Network", "IpsecTunnel"]);
        assert_eq!(d.request.objects[1].spec["cidr"], json!("10.0.0.0/24"));
        assert_eq!(d.request.objects[0].tenant, None);
        assert_eq!(d.request.prune.as_ref().unwrap().tenant, "acme");
        let docs: Vec<_> = d.origins.iter().map(|o| o.document).collect();
        // A leading `---` opens the first document, it does not end one.
        assert_eq!(docs, [1, 2, 2]);
        assert_eq!(
            d.origin_of_field("objects[2].spec.key_in")
                .unwrap()
                .to_string(),
            "ipsec-tunnels/t1 (in.yaml, document 2)"
        );
        assert_eq!(d.origin_of_field("objects[9].id"), None);
        assert_eq!(d.origin_of_field("spec.vni"), None);
    }

    #[test]
    fn json_is_yaml() {
        let d = parse(r#"{"objects": [{"kind": "Port", "id": "p", "tenant": "a", "spec": {"ips": ["10.0.0.2"]}}]}"#)
            .unwrap();
        assert_eq!(d.request.objects[0].kind, "Port");
        assert_eq!(d.request.objects[0].spec, json!({"ips": ["10.0.0.2"]}));
    }

    #[test]
    fn get_output_applies_back() {
        let d = parse(
            "kind: Network\nid: n1\ntenant: acme\ngeneration: 3\nspec: {vni: 5}\n\
             status: {phase: Ready, conditions: []}\n",
        )
        .unwrap();
        assert_eq!(d.request.objects[0].spec, json!({"vni": 5}));
    }

    #[test]
    fn mistakes_name_the_document() {
        let cases = [
            ("kind: Nope\nid: x\nspec: {}\n", "unknown kind \"Nope\""),
            ("id: x\nspec: {}\n", "missing kind"),
            (
                "kind: Port\nid: x\nspec: {}\ncolour: red\n",
                "unknown field `colour`",
            ),
            ("kind: Port\nspec: {}\n", "missing field `id`"),
            ("---\n- a\n- b\n", "found a list"),
            ("objects: {}\n", "objects must be a list"),
            ("objects: [1]\n", "objects[0] must be an object"),
            ("objects: []\nextra: 1\n", "unknown field \"extra\""),
            ("kind: [\n", ""),
        ];
        for (text, want) in cases {
            let err = crate::error_chain(&parse(text).unwrap_err());
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.starts_with("in.yaml, document"), "{err}");
        }
        let err = parse("kind: Tenant\nid: a\nspec: {}\n---\nkind: Bad\n").unwrap_err();
        assert_eq!(err.document, 2);
    }

    #[test]
    fn prune_for_two_tenants_is_refused() {
        let mut d = parse("objects: []\nprune: {tenant: a}\n").unwrap();
        assert!(d.set_prune("a").is_ok());
        assert_eq!(
            d.set_prune("b").unwrap_err().to_string(),
            "prune is asked for two tenants, \"a\" and \"b\"; apply one tenant at a time"
        );
    }

    /// The typed problems print today's messages, the batch index first.
    #[test]
    fn problems_print_as_before() {
        let err = parse("objects:\n  - {kind: Port, id: p, spec: {}}\n  - {id: q}\n").unwrap_err();
        assert_eq!(err.document, 1);
        assert!(matches!(
            &err.problem,
            DocumentProblem::Item { index: 1, problem } if matches!(**problem, DocumentProblem::MissingKind)
        ));
        assert_eq!(
            crate::error_chain(&err),
            format!(
                "in.yaml, document 1: objects[1]: missing kind (one of {})",
                kind_list()
            )
        );
        let err = parse("objects: []\nprune: {tenant: 3}\n").unwrap_err();
        assert!(matches!(err.problem, DocumentProblem::Prune(_)), "{err:?}");
        let text = crate::error_chain(&err);
        assert!(
            text.starts_with("in.yaml, document 1: prune: invalid type"),
            "{text}"
        );
        assert!(text.ends_with(" (expected {tenant: NAME})"), "{text}");
        let err = parse("7\n").unwrap_err();
        assert_eq!(
            crate::error_chain(&err),
            "in.yaml, document 1: expected an object {kind, id, tenant, spec} or {objects: [...]}, found a number"
        );
    }
}
