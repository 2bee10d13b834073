//! `GET /v1/inventory`, and the host stub's endpoints: `PUT
//! /v1/host/inventory` and `GET /v1/host/assignments[?watch=1]`. A host stub
//! is identified by its certificate; it reports its own host only and sees
//! only the functions assigned to it. Every call a host stub makes renews
//! its lease as `/metrics` counts it (`dpu_agent_host_stub_leases`).

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::Response;
use dpu_api::identity::Role;
use dpu_api::object::{Event, EventType, HostInventory, HostReport, Inventory, ObjectList};
use dpu_api::{Kind, Object, Problem, Spec};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::AppState;
use super::authz::{Caller, Operation, authorize};
use super::body::{Body, QueryParams, json_with_revision, parse_json};
use super::error::ApiError;
use super::objects::admitting;
use super::watch::ndjson;
use crate::store::StoreError;

/// At most this many devices in one report.
const MAX_DEVICES: usize = 4096;

pub async fn inventory(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    authorize(&caller, &Operation::ReadInventory)?;
    let mut dpu = BTreeMap::new();
    dpu.insert("agent_version".to_string(), json!(state.info.version));
    dpu.insert("mode".to_string(), json!(state.info.mode));
    dpu.insert("hostname".to_string(), json!(state.info.hostname));
    dpu.insert("arch".to_string(), json!(std::env::consts::ARCH));
    dpu.insert("trust_domain".to_string(), json!(state.info.trust_domain));
    dpu.insert("backends".to_string(), json!(state.controllers.backends()));
    let inv = Inventory {
        dpu,
        hosts: state.store.hosts(),
    };
    Ok(json_with_revision(
        StatusCode::OK,
        &inv,
        state.store.revision(),
    ))
}

/// Notes that `caller`, if a host stub, just called: its lease holds.
fn note_contact(state: &AppState, caller: &Caller) {
    if let Caller::Role(Role::HostStub(h)) = caller {
        state.metrics.host_contact(h);
    }
}

/// The host a host-stub call is about: the certificate's host, or for the
/// fleet controller the one it names.
fn host_of(caller: &Caller, named: Option<String>) -> Result<String, ApiError> {
    match (caller, named) {
        (Caller::Role(Role::HostStub(h)), _) => Ok(h.clone()),
        (Caller::Role(Role::FleetController), Some(h)) => {
            dpu_api::validate::check_label("host", &h)?;
            Ok(h)
        }
        (Caller::Role(Role::FleetController), None) => Err(ApiError(
            Problem::new(422, "name the host: the caller is not a host stub").with_field("host"),
        )),
        _ => Err(ApiError(Problem::new(
            403,
            "only a host stub reports or reads host assignments",
        ))),
    }
}

pub async fn put_inventory(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    authorize(&caller, &Operation::ReportHostInventory)?;
    note_contact(&state, &caller);
    let inv: HostInventory = parse_json(&body)?;
    let host = host_of(&caller, inv.host.clone())?;
    if inv.devices.len() > MAX_DEVICES {
        return Err(ApiError(
            Problem::new(422, format!("at most {MAX_DEVICES} devices per report"))
                .with_field("devices"),
        ));
    }
    for (i, d) in inv.devices.iter().enumerate() {
        if !is_pci_address(&d.pci_address) {
            return Err(ApiError(
                Problem::new(
                    422,
                    format!("{:?} is not a PCI address like 0000:03:00.1", d.pci_address),
                )
                .with_field(format!("devices[{i}].pci_address")),
            ));
        }
    }
    let report = HostReport {
        host,
        reported_at: crate::time::now_rfc3339(),
        devices: inv.devices,
    };
    let store = state.store.clone();
    let r = report.clone();
    let (_, rev, durability) = admitting(&state, move || {
        store.transact_staged(|txn| {
            txn.put_host(r);
            Ok::<_, StoreError>(())
        })
    })
    .await??;
    durability.wait().await?;
    Ok(json_with_revision(StatusCode::OK, &report, rev))
}

/// `dddd:bb:dd.f`.
pub fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && [0, 1, 2, 3, 5, 6, 8, 9]
            .iter()
            .all(|i| b[*i].is_ascii_hexdigit())
        && (b'0'..=b'7').contains(&b[11])
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentsQuery {
    pub watch: Option<String>,
    pub host: Option<String>,
}

/// Whether a function's typed spec places it on `host`.
fn placed_on(spec: &Spec, host: &str) -> bool {
    matches!(spec, Spec::Function(f) if f.host.as_deref() == Some(host))
}

/// [`placed_on`] for an object of the event stream. Events travel (and are
/// logged and replayed) in their wire form, so the placement is read from
/// the wire spec's `host` field, the same field the typed spec decodes.
fn event_assigned_to(obj: &Object, host: &str) -> bool {
    obj.kind == Kind::Function && obj.spec.get("host").and_then(Value::as_str) == Some(host)
}

pub async fn assignments(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    QueryParams(q): QueryParams<AssignmentsQuery>,
) -> Result<Response, ApiError> {
    authorize(&caller, &Operation::ReadHostAssignments)?;
    let host = host_of(&caller, q.host)?;
    note_contact(&state, &caller);
    let watching = matches!(q.watch.as_deref(), Some("1" | "true"));
    let live = state.store.subscribe();
    let revision = state.store.revision();
    let items: Vec<Object> = state
        .store
        .list(Kind::Function, None)
        .iter()
        .filter(|o| placed_on(&o.spec, &host))
        .map(|o| o.to_api())
        .collect();
    if !watching {
        return Ok(json_with_revision(
            StatusCode::OK,
            &ObjectList { revision, items },
            revision,
        ));
    }
    // The current assignments as `added`, then every change to them.
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let mut known: BTreeSet<String> = BTreeSet::new();
        let send = |ev: &Event| {
            let mut v = serde_json::to_vec(ev).unwrap_or_default();
            v.push(b'\n');
            Bytes::from(v)
        };
        for object in items {
            known.insert(object.id.clone());
            let ev = Event {
                revision,
                type_: EventType::Added,
                object,
            };
            if tx.send(send(&ev)).await.is_err() {
                return;
            }
        }
        let mut live = live;
        loop {
            tokio::select! {
                ev = live.recv() => match ev {
                    Ok(mut ev) if ev.object.kind == Kind::Function && ev.revision > revision => {
                        let mine = event_assigned_to(&ev.object, &host) && ev.type_ != EventType::Deleted;
                        let was = known.contains(&ev.object.id);
                        if mine {
                            known.insert(ev.object.id.clone());
                        } else if was {
                            // Moved to another host or deleted: gone for this host.
                            known.remove(&ev.object.id);
                            ev.type_ = EventType::Deleted;
                        } else {
                            continue;
                        }
                        if tx.send(send(&ev)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = shutdown.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    Ok(ndjson(rx, revision))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses() {
        assert!(is_pci_address("0000:03:00.1"));
        assert!(is_pci_address("0000:af:1f.7"));
        assert!(!is_pci_address("0000:03:00.8"));
        assert!(!is_pci_address("03:00.1"));
        assert!(!is_pci_address("0000:03:00:1"));
    }
}
