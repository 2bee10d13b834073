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
use dpu_api::object::{Condition, ConditionStatus, Phase, Status, WriteOutcome};

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

impl Outcome {
    /// The outcome for an object being deleted whose owned state is all
    /// gone: `status` kept, the object removed, no requeue.
    pub fn finalized(status: Status) -> Outcome {
        Outcome {
            status,
            finalized: true,
            requeue_after: None,
        }
    }
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
/// What [`Controller::reconcile`] returns: the pass, run by the engine.
pub type Reconciling<'a> = BoxFuture<'a, Result<Outcome, ReconcileError>>;

pub trait Controller: Send + Sync + 'static {
    fn kind(&self) -> Kind;

    /// Converges the world to `obj` (or tears down what it owns when
    /// `obj.deleting`) and says where it got to.
    fn reconcile<'a>(&'a self, ctx: &'a Context, obj: &'a StoredObject) -> Reconciling<'a>;

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

/// Sets `status`'s phase and its `Programmed` condition together.
pub fn set_programmed(
    status: &mut Status,
    phase: Phase,
    programmed: ConditionStatus,
    reason: Reason,
    message: impl Into<String>,
) {
    status.phase = phase;
    status.set_condition(condition("Programmed", programmed, reason, message));
}

/// The outcome for a stored spec that no longer parses (written by another
/// version of the agent): `Failed`, the condition `type_` says to PUT a
/// valid one.
pub fn unparsable_spec(status: Status, type_: &str) -> Outcome {
    not_ready(
        status,
        Phase::Failed,
        type_,
        Reason::InvalidSpec,
        "the stored spec does not parse; PUT a valid one",
    )
}

/// An outcome short of the goal: `phase`, the condition `type_` False with
/// `reason` and `message`; not looked at again on a timer (a change of the
/// object or what it depends on reconciles it again).
pub fn not_ready(
    mut status: Status,
    phase: Phase,
    type_: &str,
    reason: Reason,
    message: impl Into<String>,
) -> Outcome {
    status.phase = phase;
    status.set_condition(condition(type_, ConditionStatus::False, reason, message));
    Outcome {
        status,
        finalized: false,
        requeue_after: None,
    }
}

/// `controllers` with the placeholder controller of `kind` (one that drives
/// no backend, see [`Controller::backend`]) replaced by `configured()`; a
/// controller of that kind that drives a backend (given by the caller, e.g.
/// a test) is kept.
pub fn replace_placeholder(
    kind: Kind,
    controllers: Vec<Arc<dyn Controller>>,
    configured: impl Fn() -> Arc<dyn Controller>,
) -> Vec<Arc<dyn Controller>> {
    controllers
        .into_iter()
        .map(|c| {
            if c.kind() == kind && c.backend().is_none() {
                configured()
            } else {
                c
            }
        })
        .collect()
}

/// What the controllers' unit tests share.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use dpu_api::Kind;
    use dpu_api::object::{EventType, ObjectKey};

    use super::Context;
    use crate::store::{Store, StoreError, StoredObject};

    /// An empty store in a new temporary directory (removed with the
    /// returned `TempDir`) and a context over it.
    pub fn context() -> (tempfile::TempDir, Context) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Arc::new(Store::open(dir.path()).expect("open the store"));
        (dir, Context { store })
    }

    /// Puts `objects` into the store in one transaction.
    pub fn put_all(ctx: &Context, objects: impl IntoIterator<Item = StoredObject>) {
        ctx.store
            .transact(|t| {
                for o in objects {
                    t.put(o, EventType::Added);
                }
                Ok::<_, StoreError>(())
            })
            .expect("put the objects");
    }

    /// Stores object `kind`/`id` of `tenant` from a JSON spec (which must
    /// parse), marked as being deleted when `deleting`.
    pub fn put(
        store: &Store,
        tenant: &str,
        kind: Kind,
        id: &str,
        spec: serde_json::Value,
        deleting: bool,
    ) {
        let mut o = StoredObject::from_json(None, kind, id, tenant, &spec);
        o.deleting = deleting;
        store
            .transact(|t| {
                t.put(o, EventType::Added);
                Ok::<_, StoreError>(())
            })
            .unwrap_or_else(|e| panic!("put {id}: {e}"));
    }

    /// A copy of stored object `kind`/`id` (which must exist).
    pub fn stored(store: &Store, kind: Kind, id: &str) -> StoredObject {
        (*store.get(&ObjectKey::new(kind, id)).expect("stored")).clone()
    }

    /// Fails the test unless it runs as root: a missing environment fails
    /// the test, it never passes unrun.
    pub fn assert_root(why: &str) {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "needs root for {why}: run the tests as root (scripts/test.sh does)"
        );
    }
}
