//! `PUT/GET/DELETE /v1/{kind}/{id}`, `GET /v1/{kind}`, `POST /v1/apply` and
//! `POST /v1/plan`.

use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use dpu_api::object::{
    ApplyRequest, ApplyResponse, ApplyResult, ObjectKey, ObjectList, PlanResponse, PlannedObject,
    PutBody, WriteOutcome,
};
use std::collections::HashMap;

use dpu_api::identity::Role;
use dpu_api::validate::Writer;
use dpu_api::{Kind, Problem, limits};
use serde::Deserialize;

use super::AppState;
use super::authz::{Caller, Operation, authorize};
use super::body::{Body, QueryParams, json_with_revision, label_param, parse_json};
use super::error::ApiError;
use crate::admission::{self, Admitted, PutRequest};
use crate::reconcile::Context;
use crate::store::{StoreError, Txn};

/// Store errors and problems, in one error type for `transact` closures.
#[derive(Debug)]
pub(crate) enum TxError {
    Problem(Problem),
    Store(StoreError),
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        TxError::Store(e)
    }
}

impl From<Problem> for TxError {
    fn from(p: Problem) -> Self {
        TxError::Problem(p)
    }
}

impl From<TxError> for ApiError {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Problem(p) => ApiError(p),
            TxError::Store(e) => ApiError::from(e),
        }
    }
}

pub(crate) fn parse_kind(path: &str) -> Result<Kind, ApiError> {
    Kind::from_path(path).ok_or_else(|| {
        ApiError(Problem::new(
            404,
            format!("no such kind {path:?}; kinds are tenants, functions, networks, ports, endpoints, volumes, ipsec-tunnels, tls-listeners"),
        ))
    })
}

/// Runs blocking work that is not the store's (a large body's checks, a
/// plan's controllers) on tokio's blocking pool, off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| interrupted())
}

/// The store half of a write's admission (and a plan's), on the admission
/// threads ([`crate::threads`]), so that it never queues behind a backend's
/// blocking jobs nor behind a commit. It waits for one of
/// [`super::ADMITTING_WRITES`] slots first, so writers in flight queue as
/// tasks, not as blocked threads.
pub(crate) async fn admitting<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let _slot = state.admission.acquire().await.map_err(|_| {
        ApiError(Problem::new(
            503,
            "the agent is shutting down; nothing was changed",
        ))
    })?;
    state.admitters.run(f).await.map_err(|_| interrupted())
}

/// A write whose blocking half did not run to its end.
fn interrupted() -> ApiError {
    ApiError(Problem::new(
        500,
        "the write was interrupted; nothing was changed",
    ))
}

fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get("if-match") else {
        return Ok(None);
    };
    // `"3"` or `W/"3"` (RFC 9110 entity tags), nothing looser.
    v.to_str()
        .ok()
        .map(|s| s.trim().trim_start_matches("W/"))
        .and_then(|s| s.strip_prefix('"')?.strip_suffix('"'))
        .filter(|s| !s.is_empty() && s.len() <= 19 && s.bytes().all(|c| c.is_ascii_digit()))
        .and_then(|s| s.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError(Problem::new(
                400,
                "If-Match must be a generation in quotes, like \"3\"",
            ))
        })
}

pub async fn put(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((kind, id)): Path<(String, String)>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let kind = parse_kind(&kind)?;
    let if_match = if_match(&headers)?;
    let put: PutBody = parse_json(&body)?;
    if let Some(k) = &put.kind
        && Kind::from_name(k) != Some(kind)
        && Kind::from_path(k) != Some(kind)
    {
        let detail = format!("kind {k:?} does not match the path's {}", kind.name());
        return Err(ApiError(Problem::new(422, detail).with_field("kind")));
    }
    if let Some(body_id) = &put.id
        && body_id != &id
    {
        let detail = format!("id {body_id:?} does not match the path's {id:?}");
        return Err(ApiError(Problem::new(422, detail).with_field("id")));
    }
    let tenant = put
        .tenant
        .clone()
        .or_else(|| kind.is_tenant().then(|| id.clone()));
    authorize(
        &caller,
        &Operation::Write {
            kind,
            tenant: tenant.as_deref().unwrap_or(""),
        },
    )?;
    let store = state.store.clone();
    let mut req = PutRequest {
        kind,
        id,
        tenant,
        spec: put.spec,
        if_match,
        writer: writer(&caller),
        prechecked: false,
    };
    // The checks of the spec on its own run before an admission slot and
    // the store's writer lock are taken (TENANCY.md invariant 6), here like
    // the body's parse: one spec, bounded by the body limit and the lists'.
    req.precheck("")?;
    let (admitted, rev, durability) = admitting(&state, move || {
        store.transact_staged(|txn| {
            check_existing_owner(txn, &caller, &ObjectKey::new(kind, req.id.clone()))?;
            Ok::<_, TxError>(admission::admit_put(txn, req, "")?)
        })
    })
    .await??;
    durability.wait().await?;
    let obj = state.store.get(&admitted.key).map(|o| o.to_api());
    let status = if admitted.outcome == WriteOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_with_revision(status, &obj, rev))
}

/// Grants bound tenant identities; the fleet controller writes them.
pub(crate) fn writer(caller: &Caller) -> Writer {
    match caller {
        Caller::Role(Role::Tenant(_)) => Writer::Tenant,
        _ => Writer::FleetController,
    }
}

/// Whether `caller` may see that an object of `tenant` exists. Another
/// tenant's object answers exactly as a missing one (TENANCY.md
/// invariant 5).
fn hidden_from(caller: &Caller, tenant: &str) -> bool {
    matches!(caller, Caller::Role(Role::Tenant(t)) if t != tenant)
}

fn not_found(key: &ObjectKey) -> ApiError {
    ApiError(Problem::new(404, format!("{key} does not exist")))
}

/// A tenant may not touch another tenant's object even under its own name;
/// the refusal does not name the owner.
fn check_existing_owner(txn: &Txn<'_>, caller: &Caller, key: &ObjectKey) -> Result<(), Problem> {
    if let Some(obj) = txn.get(key) {
        if hidden_from(caller, &obj.tenant) {
            return Err(Problem::new(
                409,
                format!("{key} already exists in another tenant; choose another id"),
            )
            .with_field("id"));
        }
        authorize(
            caller,
            &Operation::Write {
                kind: key.kind,
                tenant: &obj.tenant,
            },
        )?;
    }
    Ok(())
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((kind, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let kind = parse_kind(&kind)?;
    let key = ObjectKey::new(kind, id);
    match state.store.get(&key) {
        Some(obj) if !hidden_from(&caller, &obj.tenant) => {
            authorize(
                &caller,
                &Operation::Read {
                    kind,
                    tenant: &obj.tenant,
                },
            )?;
            Ok(json_with_revision(
                StatusCode::OK,
                &obj.to_api(),
                state.store.revision(),
            ))
        }
        _ => {
            // Only callers who could read such an object learn it is absent.
            if let Caller::Role(Role::Tenant(t)) = &caller {
                authorize(&caller, &Operation::Read { kind, tenant: t })?;
            } else {
                authorize(&caller, &Operation::List { kind, tenant: None })?;
            }
            Err(not_found(&key))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub tenant: Option<String>,
}

/// The tenant a list or watch is restricted to: what was asked, or the
/// caller's own tenant when a tenant asks for everything.
pub(crate) fn effective_tenant(caller: &Caller, asked: Option<String>) -> Option<String> {
    match (caller, asked) {
        (_, Some(t)) => Some(t),
        (Caller::Role(dpu_api::identity::Role::Tenant(t)), None) => Some(t.clone()),
        (_, None) => None,
    }
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(kind): Path<String>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Response, ApiError> {
    let kind = parse_kind(&kind)?;
    label_param("tenant", &q.tenant)?;
    let tenant = effective_tenant(&caller, q.tenant);
    authorize(
        &caller,
        &Operation::List {
            kind,
            tenant: tenant.as_deref(),
        },
    )?;
    let revision = state.store.revision();
    let items = state
        .store
        .list(kind, tenant.as_deref())
        .iter()
        .map(|o| o.to_api())
        .collect();
    Ok(json_with_revision(
        StatusCode::OK,
        &ObjectList { revision, items },
        revision,
    ))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((kind, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let kind = parse_kind(&kind)?;
    let key = ObjectKey::new(kind, id);
    let visible = state
        .store
        .get(&key)
        .is_some_and(|o| !hidden_from(&caller, &o.tenant));
    if !visible {
        authorize(&caller, &Operation::List { kind, tenant: None }).or_else(|p| match &caller {
            Caller::Role(Role::Tenant(t)) if p.status == 403 => {
                authorize(&caller, &Operation::Write { kind, tenant: t })
            }
            _ => Err(p),
        })?;
        return Err(not_found(&key));
    }
    let store = state.store.clone();
    let k = key.clone();
    let (_, rev, durability) = admitting(&state, move || {
        store.transact_staged(|txn| {
            let Some(obj) = txn.get(&k).filter(|o| !hidden_from(&caller, &o.tenant)) else {
                return Err(TxError::Problem(not_found(&k).0));
            };
            authorize(
                &caller,
                &Operation::Write {
                    kind,
                    tenant: &obj.tenant,
                },
            )?;
            admission::admit_delete(txn, &k)?;
            Ok(())
        })
    })
    .await??;
    durability.wait().await?;
    let obj = state.store.get(&key).map(|o| o.to_api());
    Ok(json_with_revision(StatusCode::ACCEPTED, &obj, rev))
}

/// [`prepare_apply`] on a blocking thread of its own, before an admission
/// slot is taken: a large body's checks hold no slot (TENANCY.md
/// invariant 6).
async fn prepared(
    caller: Caller,
    req: ApplyRequest,
) -> Result<(Vec<(usize, PutRequest)>, ApplyRequest, Caller), ApiError> {
    blocking(move || {
        let parsed = prepare_apply(&caller, &req)?;
        Ok::<_, Problem>((parsed, req, caller))
    })
    .await?
    .map_err(ApiError)
}

/// The objects of an apply body as write requests, with the checks that
/// need no store (kinds, duplicates, authorization, each spec on its own)
/// done before the store's writer lock is taken.
fn prepare_apply(caller: &Caller, req: &ApplyRequest) -> Result<Vec<(usize, PutRequest)>, Problem> {
    if req.objects.len() > limits::APPLY_OBJECTS {
        return Err(Problem::new(
            422,
            format!(
                "{} objects in one apply; at most {} are allowed",
                req.objects.len(),
                limits::APPLY_OBJECTS
            ),
        )
        .with_field("objects"));
    }
    if let Some(prune) = &req.prune {
        dpu_api::validate::check_label("prune.tenant", &prune.tenant).map_err(Problem::invalid)?;
    }
    let mut seen: HashMap<(Kind, &str), usize> = HashMap::with_capacity(req.objects.len());
    let mut parsed = Vec::with_capacity(req.objects.len());
    for (i, o) in req.objects.iter().enumerate() {
        let kind = Kind::from_name(&o.kind)
            .or_else(|| Kind::from_path(&o.kind))
            .ok_or_else(|| {
                Problem::new(
                    422,
                    format!("unknown kind {}", dpu_api::validate::quote(&o.kind)),
                )
                .with_field(format!("objects[{i}].kind"))
            })?;
        if let Some(j) = seen.insert((kind, o.id.as_str()), i) {
            return Err(Problem::new(
                422,
                format!(
                    "{} {} is listed twice (also objects[{j}])",
                    kind.name(),
                    dpu_api::validate::quote(&o.id)
                ),
            )
            .with_field(format!("objects[{i}].id")));
        }
        let tenant = o
            .tenant
            .clone()
            .or_else(|| kind.is_tenant().then(|| o.id.clone()));
        authorize(
            caller,
            &Operation::Write {
                kind,
                tenant: tenant.as_deref().unwrap_or(""),
            },
        )?;
        let mut put = PutRequest {
            kind,
            id: o.id.clone(),
            tenant,
            spec: o.spec.clone(),
            if_match: None,
            writer: writer(caller),
            prechecked: false,
        };
        put.precheck(&format!("objects[{i}]"))?;
        parsed.push((i, put));
    }
    Ok(parsed)
}

/// Admits every object of an apply body in dependency order (so references
/// inside the batch resolve), then prunes. Any failure fails the whole batch.
fn admit_apply(
    txn: &mut Txn<'_>,
    caller: &Caller,
    mut parsed: Vec<(usize, PutRequest)>,
    prune: Option<&dpu_api::object::Prune>,
) -> Result<Vec<(Admitted, usize)>, TxError> {
    for (_, put) in &parsed {
        check_existing_owner(txn, caller, &ObjectKey::new(put.kind, put.id.clone()))?;
    }
    parsed.sort_by_key(|(i, r)| (Kind::ALL.iter().position(|k| *k == r.kind), *i));
    let mut out = Vec::with_capacity(parsed.len());
    for (i, req) in parsed {
        let admitted = admission::admit_put(txn, req, &format!("objects[{i}]"))?;
        out.push((admitted, i));
    }
    if let Some(prune) = prune {
        authorize(
            caller,
            &Operation::Write {
                kind: Kind::Port,
                tenant: &prune.tenant,
            },
        )?;
        let listed: Vec<ObjectKey> = out.iter().map(|(a, _)| a.key.clone()).collect();
        // Reverse dependency order: ports go before the networks they use.
        for kind in Kind::ALL.into_iter().rev().filter(|k| !k.is_tenant()) {
            for obj in txn.list(kind, Some(&prune.tenant)) {
                let key = obj.key();
                if obj.deleting || listed.contains(&key) {
                    continue;
                }
                admission::admit_delete(txn, &key)?;
                out.push((
                    Admitted {
                        key,
                        tenant: obj.tenant.clone(),
                        outcome: WriteOutcome::Deleted,
                        generation: obj.generation,
                    },
                    usize::MAX,
                ));
            }
        }
    }
    Ok(out)
}

pub async fn apply(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let req: ApplyRequest = parse_json(&body)?;
    let store = state.store.clone();
    let (parsed, req, caller) = prepared(caller, req).await?;
    let (admitted, revision, durability) = admitting(&state, move || {
        store.transact_staged(|txn| admit_apply(txn, &caller, parsed, req.prune.as_ref()))
    })
    .await??;
    durability.wait().await?;
    let mut results: Vec<(usize, ApplyResult)> = admitted
        .into_iter()
        .map(|(a, i)| {
            (
                i,
                ApplyResult {
                    kind: a.key.kind,
                    id: a.key.id,
                    outcome: a.outcome,
                    generation: a.generation,
                },
            )
        })
        .collect();
    results.sort_by_key(|(i, _)| *i);
    let resp = ApplyResponse {
        revision,
        results: results.into_iter().map(|(_, r)| r).collect(),
    };
    Ok(json_with_revision(StatusCode::OK, &resp, revision))
}

pub async fn plan(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let req: ApplyRequest = parse_json(&body)?;
    let store = state.store.clone();
    let ctx = Context {
        store: state.store.clone(),
    };
    let controllers = state.controllers.clone();
    // Admission runs under the store's locks; controllers plan after they
    // are released (a controller's plan may read the store).
    let (parsed, req, caller) = prepared(caller, req).await?;
    let (admitted, revision) = admitting(&state, move || {
        store.dry_run(|txn| {
            let admitted = admit_apply(txn, &caller, parsed, req.prune.as_ref())?;
            let admitted = admitted
                .into_iter()
                .map(|(a, i)| {
                    let obj = txn.get(&a.key);
                    (a, i, obj)
                })
                .collect::<Vec<_>>();
            Ok::<_, TxError>((admitted, txn.staged_changes()))
        })
    })
    .await??;
    let (admitted, changes) = admitted;
    let planned = blocking(move || {
        // The whole batch is planned against the store as it would be
        // after it: each controller reads a view with every staged change.
        let ctx = Context {
            store: std::sync::Arc::new(ctx.store.view_with(changes)?),
        };
        Ok::<_, StoreError>(
            admitted
                .into_iter()
                .filter_map(|(a, i, obj)| {
                    let obj = obj.or_else(|| ctx.store.get(&a.key))?;
                    let actions = controllers
                        .get(a.key.kind)
                        .map(|c| c.plan(&ctx, &obj, a.outcome))
                        .unwrap_or_default();
                    Some((
                        i,
                        PlannedObject {
                            kind: a.key.kind,
                            id: a.key.id,
                            tenant: a.tenant,
                            outcome: a.outcome,
                            actions,
                        },
                    ))
                })
                .collect::<Vec<_>>(),
        )
    })
    .await??;
    let mut planned = planned;
    planned.sort_by_key(|(i, _)| *i);
    let resp = PlanResponse {
        revision,
        objects: planned.into_iter().map(|(_, p)| p).collect(),
    };
    Ok(json_with_revision(StatusCode::OK, &resp, revision))
}
