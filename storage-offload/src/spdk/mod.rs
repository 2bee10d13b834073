//! SPDK JSON-RPC: the framing ([`framing`]), the client ([`client`]), typed
//! standard methods ([`methods`]) and NVIDIA SNAP extensions ([`snap`]).

pub mod client;
pub mod framing;
pub mod methods;
pub mod snap;

pub use client::{RpcError, RpcErrorKind, RpcRequest, SpdkClient, SpdkError};
pub use methods::RpcMethod;
