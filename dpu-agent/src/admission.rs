//! Admission: turns a write request into staged store changes, or refuses it
//! with a problem naming the field. Runs inside [`Store::transact`], so its
//! view of the other objects cannot change under it, and a refusal leaves
//! nothing written.

use dpu_api::object::{EventType, ObjectKey, Phase, Status, WriteOutcome};
use dpu_api::spec::{RefField, Spec};
use dpu_api::validate::{self, ObjectLookup, SpecTest, Writer};
use dpu_api::{Kind, Problem, limits};
use serde_json::Value;

use crate::store::{Store, StoredObject, Txn};

/// One object to create or replace.
#[derive(Debug, Clone)]
pub struct PutRequest {
    pub kind: Kind,
    pub id: String,
    /// Absent means the object's own id for tenants, and is an error for
    /// other kinds.
    pub tenant: Option<String>,
    pub spec: Value,
    /// `If-Match` generation.
    pub if_match: Option<u64>,
    /// Who writes: grants bound tenant identities.
    pub writer: Writer,
    /// Set by [`PutRequest::precheck`]; admission checks the spec on its
    /// own again when it is not.
    pub prechecked: bool,
}

impl PutRequest {
    /// The checks of the spec on its own (parsing, PEM and key checks),
    /// run before the store's writer lock is taken. A spec that leaves a
    /// write-only field out (to keep the stored secret) is checked again
    /// inside the transaction, with the secret filled in.
    pub fn precheck(&mut self, field_prefix: &str) -> Result<(), Problem> {
        let named = |e: validate::FieldError| {
            Problem::invalid(if field_prefix.is_empty() {
                e
            } else {
                e.prefixed(field_prefix)
            })
        };
        let secrets_complete = match &self.spec {
            Value::Object(map) => self
                .kind
                .secret_fields()
                .iter()
                .all(|f| map.contains_key(*f)),
            _ => true,
        };
        if secrets_complete {
            let spec = Spec::parse(self.kind, &self.spec).map_err(named)?;
            validate::validate_spec(&spec).map_err(named)?;
            self.prechecked = true;
        }
        Ok(())
    }
}

/// What admission did to one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    pub key: ObjectKey,
    pub tenant: String,
    pub outcome: WriteOutcome,
    pub generation: u64,
}

/// The other objects as validation sees them: through the transaction, with
/// secrets left out.
struct TxnLookup<'t, 'a>(&'t Txn<'a>);

impl ObjectLookup for TxnLookup<'_, '_> {
    fn get(&self, kind: Kind, id: &str) -> Option<(String, Spec)> {
        let obj = self.0.get(&ObjectKey::new(kind, id))?;
        Some((obj.tenant.clone(), obj.spec.clone()))
    }

    fn list(&self, kind: Kind, tenant: Option<&str>) -> Vec<(String, Spec)> {
        self.0
            .list(kind, tenant)
            .into_iter()
            .map(|o| (o.id.clone(), o.spec.clone()))
            .collect()
    }

    fn find(&self, kind: Kind, tenant: Option<&str>, pred: &mut SpecTest) -> Option<String> {
        self.0
            .list(kind, tenant)
            .into_iter()
            .find(|o| pred(&o.id, &o.spec))
            .map(|o| o.id.clone())
    }

    fn referring(
        &self,
        kind: Kind,
        tenant: &str,
        field: RefField,
        target: &str,
    ) -> Vec<(String, Spec)> {
        self.0
            .referring(kind, tenant, field, target)
            .into_iter()
            .map(|o| (o.id.clone(), o.spec.clone()))
            .collect()
    }

    fn network_with_vni(&self, vni: u32, except: &str) -> Option<String> {
        self.0.network_with_vni(vni, except).map(|o| o.id.clone())
    }
}

/// Creates or replaces one object. `field_prefix` is put in front of field
/// names (`objects[3]` inside an apply).
pub fn admit_put(
    txn: &mut Txn<'_>,
    req: PutRequest,
    field_prefix: &str,
) -> Result<Admitted, Problem> {
    let named = |e: validate::FieldError| {
        Problem::invalid(if field_prefix.is_empty() {
            e
        } else {
            e.prefixed(field_prefix)
        })
    };
    let kind = req.kind;
    let tenant = match (&req.tenant, kind.is_tenant()) {
        (Some(t), _) => t.clone(),
        (None, true) => req.id.clone(),
        (None, false) => {
            return Err(named(validate::FieldError::new("tenant", "is required")));
        }
    };
    validate::validate_envelope(kind, &req.id, &tenant).map_err(named)?;
    let key = ObjectKey::new(kind, req.id.clone());
    let existing = txn.get(&key);

    if let Some(old) = &existing {
        if old.tenant != tenant {
            // Ids are unique per kind on the DPU; the owner is not named
            // (TENANCY.md invariant 5).
            return Err(Problem::new(
                409,
                format!(
                    "{key} already exists in another tenant; choose another id (objects \
                     cannot move between tenants)"
                ),
            )
            .with_field(field(field_prefix, "id")));
        }
        if old.deleting {
            return Err(Problem::new(
                409,
                format!("{key} is being deleted; wait until it is gone"),
            ));
        }
    }
    if let Some(want) = req.if_match {
        let have = existing.as_ref().map_or(0, |o| o.generation);
        if want != have {
            return Err(Problem::new(
                412,
                format!("If-Match generation {want} does not match {key}'s generation {have}"),
            ));
        }
    }

    // A write-only field left out of an update keeps its stored value, so a
    // read-modify-write by a client that never saw the secret is safe.
    let mut spec_value = req.spec;
    // Checked before the lock by `PutRequest::precheck` unless a secret is
    // filled in from the stored spec below.
    let mut prechecked = req.prechecked;
    let old_spec = match &existing {
        Some(old) => Some(
            Store::open_spec(txn.sealer(), old)
                .map_err(|e| crate::server::error::store_problem(&e))?,
        ),
        None => None,
    };
    if let (Some(stored), Value::Object(map)) = (&old_spec, &mut spec_value) {
        let mut stored = stored.clone();
        for f in kind.secret_fields() {
            if !map.contains_key(*f)
                && let Some(v) = stored.secret_mut(f)
            {
                map.insert((*f).to_string(), Value::String(v.take()));
                prechecked = false;
            }
        }
    }

    let mut spec = Spec::parse(kind, &spec_value).map_err(named)?;
    drop(spec_value);
    if !prechecked {
        validate::validate_spec(&spec).map_err(named)?;
    }
    validate::validate_in_context(&req.id, &tenant, req.writer, &spec, &TxnLookup(txn))
        .map_err(named)?;
    if existing.is_none() {
        check_quota(txn, kind, &tenant)?;
    }

    if let (Some(old), Some(stored)) = (&existing, &old_spec)
        && *stored == spec
    {
        return Ok(Admitted {
            key,
            tenant,
            outcome: WriteOutcome::Unchanged,
            generation: old.generation,
        });
    }

    let sealed = Store::seal_secrets(txn.sealer(), &key, &mut spec)
        .map_err(|e| crate::server::error::store_problem(&e))?;
    let (generation, status, outcome, event) = match &existing {
        Some(old) => (
            old.generation + 1,
            old.status.clone(),
            WriteOutcome::Updated,
            EventType::Modified,
        ),
        None => (
            1,
            Status::default(),
            WriteOutcome::Created,
            EventType::Added,
        ),
    };
    txn.put(
        StoredObject {
            id: req.id,
            tenant: tenant.clone(),
            generation,
            spec,
            sealed,
            status,
            deleting: false,
        },
        event,
    );
    Ok(Admitted {
        key,
        tenant,
        outcome,
        generation,
    })
}

fn field(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Refuses a new object beyond its tenant's quota (409). Every kind has
/// one: `spec.quotas` of the tenant, or [`limits::DEFAULT_QUOTA`].
fn check_quota(txn: &Txn<'_>, kind: Kind, tenant: &str) -> Result<(), Problem> {
    let quotas = txn
        .get(&ObjectKey::new(Kind::Tenant, tenant))
        .and_then(|t| t.spec.as_tenant().and_then(|s| s.quotas.clone()))
        .unwrap_or_default();
    let (limit, name) = match kind {
        Kind::Tenant => return Ok(()),
        Kind::Function => (quotas.functions, "functions"),
        Kind::Volume => (quotas.volumes, "volumes"),
        Kind::IpsecTunnel => (quotas.tunnels, "tunnels"),
        Kind::Network => (quotas.networks, "networks"),
        Kind::Port => (quotas.ports, "ports"),
        Kind::Endpoint => (quotas.endpoints, "endpoints"),
        Kind::TlsListener => (quotas.tls_listeners, "tls_listeners"),
    };
    let limit = limit.unwrap_or(limits::DEFAULT_QUOTA);
    let used = txn.count(kind, Some(tenant));
    if used as u64 >= u64::from(limit) {
        return Err(Problem::new(
            409,
            format!(
                "tenant {tenant:?} has used its quota of {limit} {name}; delete one or raise spec.quotas.{name}"
            ),
        ));
    }
    Ok(())
}

/// Objects that reference `key`, as `kind/id`: a tenant's objects, or the
/// ports, endpoints and volumes naming it. Objects already being deleted
/// count only with `include_deleting` (they block the teardown, not the
/// request).
pub fn referrers(
    txn: &Txn<'_>,
    key: &ObjectKey,
    tenant: &str,
    include_deleting: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    let counts = |o: &StoredObject| include_deleting || !o.deleting;
    if key.kind == Kind::Tenant {
        for kind in Kind::ALL.into_iter().filter(|k| !k.is_tenant()) {
            for o in txn
                .list(kind, Some(&key.id))
                .into_iter()
                .filter(|o| counts(o))
            {
                out.push(o.key().to_string());
            }
        }
        return out;
    }
    // Through the store's reference index: a network's or a function's
    // referrers cost what they are, not the tenant's size.
    let Some(field) = RefField::ALL.into_iter().find(|f| f.kind() == key.kind) else {
        return out;
    };
    for kind in [Kind::Port, Kind::Endpoint, Kind::Volume] {
        for o in txn
            .referring(kind, tenant, field, &key.id)
            .into_iter()
            .filter(|o| counts(o))
        {
            out.push(o.key().to_string());
        }
    }
    out
}

/// Marks an object for deletion (its controller tears it down, then it is
/// removed). `Ok(false)` when it was already being deleted.
pub fn admit_delete(txn: &mut Txn<'_>, key: &ObjectKey) -> Result<bool, Problem> {
    let Some(obj) = txn.get(key) else {
        return Err(Problem::new(404, format!("{key} does not exist")));
    };
    if obj.deleting {
        return Ok(false);
    }
    let blocking = referrers(txn, key, &obj.tenant, false);
    if !blocking.is_empty() {
        return Err(Problem::new(
            409,
            format!(
                "{key} is still referenced by {}; delete those first",
                blocking.join(", ")
            ),
        ));
    }
    let mut obj = (*obj).clone();
    obj.deleting = true;
    obj.status.phase = Phase::Deleting;
    txn.put(obj, EventType::Modified);
    Ok(true)
}
