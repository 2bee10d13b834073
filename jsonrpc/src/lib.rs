//! One JSON-RPC layer for the three JSON-RPC peers of the control plane:
//! ovsdb-server (RFC 7047, JSON-RPC 1.0), Open vSwitch's unixctl sockets
//! (`ovs-appctl`, JSON-RPC 1.0) and SPDK/SNAP (JSON-RPC 2.0).
//!
//! Layers, bottom up:
//! - [`framer`]: splits a byte stream of back-to-back JSON values (no
//!   delimiter) into complete values, incrementally, with a size limit;
//! - [`message`]: requests, notifications and responses of either version
//!   ([`Version`]), decoded from and encoded to the wire;
//! - [`matcher`]: request ids, the pending map, routing of responses to
//!   their callers, and failing every pending request when a connection ends;
//! - [`connection`]: an async connection task over any reader/writer pair
//!   built on the three, with notifications sent to a channel.
//!
//! See README.md for what each peer needs and the limits.

pub mod connection;
pub mod framer;
pub mod matcher;
pub mod message;

pub use connection::{Connection, ConnectionError, Notification, Options};
pub use framer::{DEFAULT_MAX_LEN, FrameError, Framer, TopLevel};
pub use matcher::{Failure, Matcher, Outcome, Routed};
pub use message::{Message, MessageError, Version};
