//! Why a controller's backend cannot be started or reached. The typed cause
//! is the `#[source]`; the controller prints the chain
//! ([`crate::error_chain`]) into the `Unavailable` condition or the
//! `BackendUnreachable` reconcile error.

use net_offload::ovsdb::OvsdbError;
use storage_offload::spdk::SpdkError;

#[derive(Debug, thiserror::Error)]
pub enum BackendStartError {
    #[error("invalid OVSDB address {db:?}")]
    OvsdbAddress {
        db: String,
        #[source]
        source: OvsdbError,
    },
    #[error("the OVSDB socket {db} does not exist (is Open vSwitch running?)")]
    NoOvsdbSocket { db: String },
    #[error(
        "{dir} has no subsystems directory: load the nvmet and nvmet-tcp modules and mount configfs"
    )]
    NoNvmetSubsystems { dir: String },
    #[error("cannot create {dir} with mode 0700")]
    BackingDir {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    /// The SPDK connection failed; its own message says how.
    #[error(transparent)]
    Spdk(#[from] SpdkError),
    /// A controller made over a given backend lost it (tests, tools).
    #[error("the given backend was dropped")]
    Dropped,
}
