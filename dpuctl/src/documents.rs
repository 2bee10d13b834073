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

/// An input that is not a valid apply document; nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}, document {document}: {reason}")]
pub struct DocumentError {
    pub source_name: String,
    pub document: usize,
    pub reason: String,
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
            let err = |reason: String| DocumentError {
                source_name: source_name.to_string(),
                document,
                reason,
            };
            let value = Value::deserialize(doc).map_err(|e| err(e.to_string()))?;
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
                    return Err(err(format!(
                        "expected an object {{kind, id, tenant, spec}} or {{objects: [...]}}, found {}",
                        json_type(&other)
                    )));
                }
            }
        }
        Ok(())
    }

    fn add_batch(&mut self, mut map: Map<String, Value>) -> Result<(), String> {
        let objects = map.remove("objects").unwrap_or(Value::Null);
        if let Some(prune) = map.remove("prune") {
            let prune: Prune = serde_json::from_value(prune)
                .map_err(|e| format!("prune: {e} (expected {{tenant: NAME}})"))?;
            self.set_prune(&prune.tenant)?;
        }
        if let Some(key) = map.keys().next() {
            return Err(format!(
                "unknown field {key:?} next to objects (expected objects and prune)"
            ));
        }
        let Value::Array(items) = objects else {
            return Err("objects must be a list".into());
        };
        for (i, item) in items.into_iter().enumerate() {
            let Value::Object(obj) = item else {
                return Err(format!("objects[{i}] must be an object"));
            };
            let o = object_write(obj).map_err(|e| format!("objects[{i}]: {e}"))?;
            self.request.objects.push(o);
        }
        Ok(())
    }

    /// Prunes `tenant`'s objects not listed; two different tenants are an
    /// error.
    pub fn set_prune(&mut self, tenant: &str) -> Result<(), String> {
        match &self.request.prune {
            Some(p) if p.tenant != tenant => Err(format!(
                "prune is asked for two tenants, {:?} and {tenant:?}; apply one tenant at a time",
                p.tenant
            )),
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
fn object_write(mut map: Map<String, Value>) -> Result<ObjectWrite, String> {
    // What `get -o yaml|json` prints can be applied back.
    map.remove("generation");
    map.remove("status");
    let kind = match map.get("kind") {
        Some(Value::String(k)) => Kind::parse_loose(k)
            .ok_or_else(|| format!("unknown kind {k:?}; kinds are {}", kind_list()))?,
        Some(_) => return Err("kind must be a string".into()),
        None => return Err(format!("missing kind (one of {})", kind_list())),
    };
    map.insert("kind".into(), Value::String(kind.name().to_string()));
    serde_json::from_value(Value::Object(map)).map_err(|e| e.to_string())
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
            let err = parse(text).unwrap_err();
            assert!(err.to_string().contains(want), "{text:?}: {err}");
            assert!(err.to_string().starts_with("in.yaml, document"), "{err}");
        }
        let err = parse("kind: Tenant\nid: a\nspec: {}\n---\nkind: Bad\n").unwrap_err();
        assert_eq!(err.document, 2);
    }

    #[test]
    fn prune_for_two_tenants_is_refused() {
        let mut d = parse("objects: []\nprune: {tenant: a}\n").unwrap();
        assert!(d.set_prune("a").is_ok());
        assert!(d.set_prune("b").is_err());
    }
}
