//! SPDK JSON-RPC: the client ([`client`], on the shared JSON-RPC 2.0 framer,
//! messages and matcher of `dpu-jsonrpc`), typed standard methods
//! ([`methods`]) and NVIDIA SNAP extensions ([`snap`]).

pub mod client;
pub mod methods;
pub mod snap;

pub use client::{RpcError, RpcErrorKind, RpcRequest, SpdkClient, SpdkError};
pub use methods::RpcMethod;
