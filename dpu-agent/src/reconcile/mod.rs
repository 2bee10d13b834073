//! The reconcile engine and its controllers: one controller per kind, each
//! observing the world, planning the difference to the object's spec,
//! applying it, and reporting status. See [`engine`] for the work queue.

pub mod backend_error;
pub mod engine;
pub mod functions;
pub mod ipsec;
pub mod network;
pub mod reason;
pub mod spec_error;
pub mod tenant_netns;
pub mod tenants;
pub mod tls;
pub mod unavailable;
pub mod volumes;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dpu_api::Kind;
use dpu_api::object::{Condition, ConditionStatus, Status, WriteOutcome};

use crate::store::{Store, StoredObject};

pub use reason::Reason;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a controller reached for one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The new status (`observed_generation` is set by the engine).
    pub status: Status,
    /// For an object being deleted: everything it owned is gone, remove it.
    pub finalized: bool,
    /// Look again after this long even without a change (polling counters,
    /// waiting for a backend).
    pub requeue_after: Option<Duration>,
}

/// A failure worth retrying with backoff; `reason` and the message go into
/// the object's `Programmed` condition. The message is already the edge's
/// text (causes printed with [`crate::error_chain`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct ReconcileError {
    pub reason: Reason,
    pub message: String,
}

impl ReconcileError {
    pub fn new(reason: Reason, message: impl Into<String>) -> ReconcileError {
        ReconcileError {
            reason,
            message: message.into(),
        }
    }
}

/// What controllers share: the store, for reading related objects and
/// opening sealed secrets.
#[derive(Debug, Clone)]
pub struct Context {
    pub store: Arc<Store>,
}

/// One domain's controller.
pub trait Controller: Send + Sync + 'static {
    fn kind(&self) -> Kind;

    /// Converges the world to `obj` (or tears down what it owns when
    /// `obj.deleting`) and says where it got to.
    fn reconcile<'a>(
        &'a self,
        ctx: &'a Context,
        obj: &'a StoredObject,
    ) -> BoxFuture<'a, Result<Outcome, ReconcileError>>;

    /// What `reconcile` would do to the world for this change, one action per
    /// line in the backend's own syntax; pure.
    fn plan(&self, ctx: &Context, obj: &StoredObject, outcome: WriteOutcome) -> Vec<String>;

    /// The backend this controller drives, for `/readyz`: its name and
    /// whether it is connected (None when there is no backend to connect).
    fn backend(&self) -> Option<(String, bool)> {
        None
    }

    /// Prometheus text lines (with their `# HELP`/`# TYPE`) about the
    /// backend, appended to `/metrics`; none by default.
    fn metrics(&self, _out: &mut String) {}
}

/// A condition stamped now.
pub fn condition(
    type_: &str,
    status: ConditionStatus,
    reason: Reason,
    message: impl Into<String>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.as_str().to_string(),
        message: message.into(),
        last_transition: crate::time::now_rfc3339(),
    }
}
