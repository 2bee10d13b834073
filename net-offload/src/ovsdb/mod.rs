//! Native OVSDB client (RFC 7047 + the ovsdb-server(7) extensions the agent
//! needs), JSON-RPC 1.0 over unix or tcp sockets.
//!
//! Layers, bottom up:
//! - [`jsonrpc`]: JSON-RPC 1.0 from the shared `dpu-jsonrpc` crate (framer,
//!   messages — never a `"jsonrpc"` member —, request/response matcher) and
//!   OVSDB's error shape;
//! - [`atom`], [`schema`]: OVSDB values and column types;
//! - [`transact`]: the typed transaction builder and reply decoding;
//! - [`monitor`]: the local replica fed by `monitor_cond(_since)`;
//! - [`client`]: the connection task, reconnect and resync;
//! - [`rows`], [`vswitch`]: typed Open_vSwitch rows and the conveniences the
//!   agent calls (ensure a bridge, add/remove many ports in one transaction,
//!   owner marks in `external_ids`).
//!
//! See net-offload/README.md for usage and limits.

pub mod atom;
pub mod client;
pub mod jsonrpc;
pub mod monitor;
pub mod rows;
pub mod schema;
pub mod transact;
pub mod vswitch;

pub use atom::{Atom, Datum, DatumError, Uuid};
pub use client::{ClientConfig, Endpoint, OvsdbClient, OvsdbError, Session};
pub use monitor::{ChangedRows, MonitorError, MonitorSpec, Replica, ReplicaCursor, RowUpdateError};
pub use rows::{
    BridgeRow, InterfaceRow, OWNER_KEY, OpenVswitchRow, PortRow, RowError, owner_external_ids,
    owner_of, owner_value,
};
pub use schema::{ColumnType, DatabaseSchema, SchemaError};
pub use transact::{
    Condition, Function, Inserted, Mutation, Mutator, OpIndex, Operation, OperationResult,
    ResultError, Row, TransactError, TransactReply, Transaction, WaitUntil,
};
pub use vswitch::{BridgeSpec, PortSpec, VswitchError, vswitch_monitor};
