//! Executes planned actions against an [`IpsecBackend`]; the kernel one is
//! [`XfrmBackend`]. Each action is tried once; failures are collected (with
//! the action's redacted description) so the rest still run and the next
//! reconcile retries: level-triggered, no partial rollback.

use std::path::Path;

use crate::plan::{Action, Observed};
use crate::xfrm::socket::{XfrmError, XfrmSocket};
use crate::xfrm::{Policy, PolicyId, Request, Sa, SaId};

/// The seam between planning and the kernel, so the controller can run in
/// tests without root.
pub trait IpsecBackend: Send {
    fn observe(&mut self) -> Result<Observed, XfrmError>;
    fn add_sa(&mut self, sa: &Sa) -> Result<(), XfrmError>;
    fn delete_sa(&mut self, id: &SaId) -> Result<(), XfrmError>;
    fn put_policy(&mut self, p: &Policy) -> Result<(), XfrmError>;
    fn delete_policy(&mut self, id: &PolicyId) -> Result<(), XfrmError>;
}

/// XFRM over netlink, in one network namespace.
#[derive(Debug)]
pub struct XfrmBackend {
    sock: XfrmSocket,
}

impl XfrmBackend {
    pub fn open(netns: Option<&Path>) -> Result<XfrmBackend, XfrmError> {
        Ok(XfrmBackend {
            sock: XfrmSocket::open_in(netns)?,
        })
    }
}

impl XfrmBackend {
    /// In a private network namespace (see
    /// [`XfrmSocket::open_in_private_netns`]).
    pub fn open_private() -> Result<XfrmBackend, XfrmError> {
        Ok(XfrmBackend {
            sock: XfrmSocket::open_in_private_netns()?,
        })
    }
}

impl IpsecBackend for XfrmBackend {
    fn observe(&mut self) -> Result<Observed, XfrmError> {
        Ok(Observed {
            sas: self.sock.sas()?,
            policies: self.sock.policies()?,
        })
    }
    fn add_sa(&mut self, sa: &Sa) -> Result<(), XfrmError> {
        self.sock.request(&Request::NewSa(sa.clone()))
    }
    fn delete_sa(&mut self, id: &SaId) -> Result<(), XfrmError> {
        self.sock.request(&Request::DelSa(*id))
    }
    fn put_policy(&mut self, p: &Policy) -> Result<(), XfrmError> {
        self.sock.request(&Request::UpdPolicy(p.clone()))
    }
    fn delete_policy(&mut self, id: &PolicyId) -> Result<(), XfrmError> {
        self.sock.request(&Request::DelPolicy(*id))
    }
}

/// One action that failed: its description (no keys) and the kernel's
/// error as its typed source.
#[derive(Debug, thiserror::Error)]
#[error("{action}")]
pub struct ActionFailure {
    pub action: String,
    #[source]
    pub error: XfrmError,
}

/// An SA whose offload attempt the kernel or device refused under `auto`,
/// so the next attempt (less offload) was tried.
#[derive(Debug, thiserror::Error)]
#[error("SA spi 0x{spi:08x}: offload {} refused, trying the next", if *.requested { "request" } else { "none" })]
pub struct OffloadFallback {
    pub spi: u32,
    /// Whether the refused attempt asked for a device offload.
    pub requested: bool,
    #[source]
    pub error: XfrmError,
}

#[derive(Debug, Default)]
pub struct ApplyReport {
    pub applied: usize,
    pub failures: Vec<ActionFailure>,
    /// Offload refusals that were fallen back from under `auto`.
    pub offload_fallbacks: Vec<OffloadFallback>,
}

/// Errnos that mean "this device or kernel cannot do that offload".
fn is_offload_refusal(e: &XfrmError) -> bool {
    matches!(
        e.errno(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENODEV | libc::EPROTONOSUPPORT)
    )
}

pub fn apply(backend: &mut dyn IpsecBackend, actions: &[Action]) -> ApplyReport {
    let mut report = ApplyReport::default();
    for action in actions {
        let result = match action {
            Action::AddSa {
                sa,
                offload_attempts,
                ..
            } => {
                let mut last = None;
                for (i, attempt) in offload_attempts.iter().enumerate() {
                    let mut sa = (**sa).clone();
                    sa.offload = *attempt;
                    match backend.add_sa(&sa) {
                        Ok(()) => {
                            last = None;
                            break;
                        }
                        Err(e) if i + 1 < offload_attempts.len() && is_offload_refusal(&e) => {
                            report.offload_fallbacks.push(OffloadFallback {
                                spi: sa.spi,
                                requested: attempt.is_some(),
                                error: e,
                            });
                        }
                        Err(e) => {
                            last = Some(e);
                            break;
                        }
                    }
                }
                match last {
                    None => Ok(()),
                    Some(e) => Err(e),
                }
            }
            Action::DeleteSa { id, .. } => tolerate_gone(backend.delete_sa(id)),
            Action::PutPolicy { policy, .. } => backend.put_policy(policy),
            Action::DeletePolicy { id, .. } => tolerate_gone(backend.delete_policy(id)),
        };
        match result {
            Ok(()) => report.applied += 1,
            Err(e) => report.failures.push(ActionFailure {
                action: action.to_string(),
                error: e,
            }),
        }
    }
    report
}

/// A delete of something already gone is done.
fn tolerate_gone(r: Result<(), XfrmError>) -> Result<(), XfrmError> {
    match r {
        Err(e) if e.errno() == Some(libc::ESRCH) || e.errno() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}
