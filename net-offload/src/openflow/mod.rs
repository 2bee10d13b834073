//! OpenFlow 1.4 codec and client, with OpenFlow 1.3 + the ONF bundle extension
//! as fallback, for the subset of messages, match fields and actions the
//! pipeline compiler needs (see README.md, section "OpenFlow").
//!
//! - [`header`]: the 8-byte header, versions, framing.
//! - [`message`]: [`Message`], [`encode`], [`decode`], HELLO negotiation.
//! - [`oxm`], [`action`], [`instruction`]: canonical match fields, actions, instructions.
//! - [`flow_mod`], [`bundle`], [`multipart`], [`meter`]: message bodies.
//! - [`error`]: decode errors and the switch's ERROR messages, named per the spec.
//! - [`text`]: ovs-ofctl flow syntax (`Display` and `FromStr`).
//! - [`client`]: the async client on a bridge's management socket or TCP.
//!
//! Decoded forms are canonical, so desired and observed flows are compared
//! with `==` rather than as text (OVS prints actions in its own spelling).

pub mod action;
pub mod bundle;
pub mod client;
pub mod error;
pub mod flow_mod;
pub mod header;
pub mod instruction;
pub mod message;
pub mod meter;
pub mod multipart;
pub mod oxm;
pub mod text;

pub use action::{Action, Ct, CtZone, RegMove, port};
pub use bundle::{BundleAdd, BundleControl, BundleCtrlType, bundle_flags};
pub use client::{FlowFailure, OpenFlowClient, OpenFlowError};
pub use error::{DecodeError, EncodeError, ErrorType, SwitchError};
pub use flow_mod::{Flow, FlowMod, FlowModCommand, TABLE_ALL, flow_flags};
pub use header::{Header, Version};
pub use instruction::{Instructions, WriteMetadata};
pub use message::{Message, SwitchFeatures, decode, encode};
pub use meter::{DropBand, MeterCommand, MeterMod, meter_flags};
pub use multipart::{
    AggregateStats, FlowEntry, FlowStatsRequest, MultipartReply, MultipartReplyBody,
    MultipartRequest,
};
pub use oxm::{Field, FieldMatch, Match, RawOxm, ct_state, mac, mac_octets};
pub use text::TextError;
