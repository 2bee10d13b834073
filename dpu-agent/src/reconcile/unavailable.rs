//! The controller for a kind whose backend is not built into this agent or
//! not configured: the object is stored and stays `Pending` with a
//! `BackendUnavailable` condition naming the backend. Never a fake `Ready`.
//! Deleting it needs no teardown, since nothing was programmed.

use dpu_api::Kind;
use dpu_api::object::{ConditionStatus, Phase, WriteOutcome};

use super::{Context, Controller, Outcome, Reason, Reconciling, condition};
use crate::store::StoredObject;

#[derive(Debug, Clone)]
pub struct Unavailable {
    kind: Kind,
    backend: String,
    why: String,
}

impl Unavailable {
    /// `backend` names what would program this kind (e.g. "net-offload
    /// (OVSDB/OpenFlow)"); `why` says why it is not here.
    pub fn new(kind: Kind, backend: impl Into<String>, why: impl Into<String>) -> Self {
        Unavailable {
            kind,
            backend: backend.into(),
            why: why.into(),
        }
    }

    /// The default for each kind in this build.
    pub fn for_kind(kind: Kind) -> Self {
        let backend = match kind {
            Kind::Function => "functions (net-offload: sriov/veth)",
            Kind::Network | Kind::Port | Kind::Endpoint => "network (net-offload: OVSDB/OpenFlow)",
            Kind::Volume => "storage (storage-offload: SPDK/SNAP or kernel nvmet)",
            Kind::IpsecTunnel => "IPsec (crypto: XFRM)",
            Kind::TlsListener => "TLS offload (crypto: TLS proxy)",
            Kind::Tenant => "none",
        };
        Unavailable::new(kind, backend, "it is not wired into this agent build yet")
    }
}

impl Controller for Unavailable {
    fn kind(&self) -> Kind {
        self.kind
    }

    fn reconcile<'a>(&'a self, _ctx: &'a Context, obj: &'a StoredObject) -> Reconciling<'a> {
        Box::pin(async move {
            let mut status = obj.status.clone();
            if obj.deleting {
                return Ok(Outcome::finalized(status));
            }
            status.phase = Phase::Pending;
            status.set_condition(condition(
                "BackendUnavailable",
                ConditionStatus::True,
                Reason::NotConfigured,
                format!("the {} backend is unavailable: {}; the object is stored and will be programmed once it is", self.backend, self.why),
            ));
            Ok(Outcome {
                status,
                finalized: false,
                requeue_after: None,
            })
        })
    }

    fn plan(&self, _ctx: &Context, _obj: &StoredObject, _outcome: WriteOutcome) -> Vec<String> {
        vec![format!(
            "nothing: the {} backend is unavailable ({})",
            self.backend, self.why
        )]
    }

    fn backend(&self) -> Option<(String, bool)> {
        None
    }
}
