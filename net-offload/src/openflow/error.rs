//! Errors of the codec: [`DecodeError`] for bytes that are not a message we
//! understand, and [`SwitchError`], an OpenFlow ERROR message sent by the switch,
//! decoded with the names the OpenFlow 1.3/1.4 specification gives its type and code.

use std::fmt;

use bytes::Bytes;

use super::header::{Header, ONF_EXPERIMENTER};

/// Bytes that cannot be decoded. The decoder returns this for any input; it never panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message truncated: {what} needs {needed} bytes, {available} left")]
    Truncated {
        what: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("bad length {length} in {what}")]
    BadLength { what: &'static str, length: usize },
    #[error("unsupported OpenFlow version {0:#04x}")]
    UnsupportedVersion(u8),
    #[error("unexpected message type {0}")]
    UnexpectedType(u8),
    #[error("unsupported match type {0} (only OXM is supported)")]
    BadMatchType(u16),
    #[error("duplicate match field {0}")]
    DuplicateField(String),
    #[error("unsupported {what} {value:#x}")]
    Unsupported { what: &'static str, value: u64 },
}

/// A message that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("message would be {0} bytes, more than OpenFlow's 65535-byte limit")]
    TooLong(usize),
    #[error("register reg{0} does not exist (reg0..reg15)")]
    InvalidRegister(u8),
}

/// The `type` of an OpenFlow ERROR message (OF1.3/1.4 `ofp_error_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    HelloFailed,
    BadRequest,
    BadAction,
    BadInstruction,
    BadMatch,
    FlowModFailed,
    GroupModFailed,
    PortModFailed,
    TableModFailed,
    QueueOpFailed,
    SwitchConfigFailed,
    RoleRequestFailed,
    MeterModFailed,
    TableFeaturesFailed,
    BadProperty,
    AsyncConfigFailed,
    FlowMonitorFailed,
    BundleFailed,
    Experimenter,
    Other(u16),
}

impl ErrorType {
    pub fn from_wire(value: u16) -> Self {
        use ErrorType::*;
        match value {
            0 => HelloFailed,
            1 => BadRequest,
            2 => BadAction,
            3 => BadInstruction,
            4 => BadMatch,
            5 => FlowModFailed,
            6 => GroupModFailed,
            7 => PortModFailed,
            8 => TableModFailed,
            9 => QueueOpFailed,
            10 => SwitchConfigFailed,
            11 => RoleRequestFailed,
            12 => MeterModFailed,
            13 => TableFeaturesFailed,
            14 => BadProperty,
            15 => AsyncConfigFailed,
            16 => FlowMonitorFailed,
            17 => BundleFailed,
            0xffff => Experimenter,
            other => Other(other),
        }
    }

    /// The specification's name, e.g. `OFPET_BAD_INSTRUCTION`.
    pub fn name(self) -> &'static str {
        use ErrorType::*;
        match self {
            HelloFailed => "OFPET_HELLO_FAILED",
            BadRequest => "OFPET_BAD_REQUEST",
            BadAction => "OFPET_BAD_ACTION",
            BadInstruction => "OFPET_BAD_INSTRUCTION",
            BadMatch => "OFPET_BAD_MATCH",
            FlowModFailed => "OFPET_FLOW_MOD_FAILED",
            GroupModFailed => "OFPET_GROUP_MOD_FAILED",
            PortModFailed => "OFPET_PORT_MOD_FAILED",
            TableModFailed => "OFPET_TABLE_MOD_FAILED",
            QueueOpFailed => "OFPET_QUEUE_OP_FAILED",
            SwitchConfigFailed => "OFPET_SWITCH_CONFIG_FAILED",
            RoleRequestFailed => "OFPET_ROLE_REQUEST_FAILED",
            MeterModFailed => "OFPET_METER_MOD_FAILED",
            TableFeaturesFailed => "OFPET_TABLE_FEATURES_FAILED",
            BadProperty => "OFPET_BAD_PROPERTY",
            AsyncConfigFailed => "OFPET_ASYNC_CONFIG_FAILED",
            FlowMonitorFailed => "OFPET_FLOW_MONITOR_FAILED",
            BundleFailed => "OFPET_BUNDLE_FAILED",
            Experimenter => "OFPET_EXPERIMENTER",
            Other(_) => "OFPET_UNKNOWN",
        }
    }
}

/// An ERROR message from the switch. `xid` is the xid of the request it answers
/// (OVS echoes the offending request's xid); `data` holds the start of that request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchError {
    pub xid: u32,
    pub error_type: ErrorType,
    /// The raw `type` field (0xffff for experimenter errors).
    pub type_code: u16,
    /// `code`, or `exp_code` for experimenter errors.
    pub code: u16,
    pub experimenter: Option<u32>,
    pub data: Bytes,
}

impl SwitchError {
    /// The header of the offending request, when the switch included it in `data`.
    pub fn offending_header(&self) -> Option<Header> {
        Header::decode(&self.data).ok()
    }

    /// The specification's name for the code, e.g. `OFPBIC_BAD_TABLE_ID`, when known.
    pub fn code_name(&self) -> Option<&'static str> {
        let (prefix_table, code): (&[&str], u16) = match (self.error_type, self.experimenter) {
            (ErrorType::HelloFailed, _) => (&HELLO_FAILED, self.code),
            (ErrorType::BadRequest, _) => (&BAD_REQUEST, self.code),
            (ErrorType::BadAction, _) => (&BAD_ACTION, self.code),
            (ErrorType::BadInstruction, _) => (&BAD_INSTRUCTION, self.code),
            (ErrorType::BadMatch, _) => (&BAD_MATCH, self.code),
            (ErrorType::FlowModFailed, _) => (&FLOW_MOD_FAILED, self.code),
            (ErrorType::MeterModFailed, _) => (&METER_MOD_FAILED, self.code),
            (ErrorType::BundleFailed, _) => (&BUNDLE_FAILED, self.code),
            // OF1.3 + ONF bundle extension: bundle codes are 2300 + the OF1.4 code.
            (ErrorType::Experimenter, Some(ONF_EXPERIMENTER)) if self.code >= 2300 => {
                (&BUNDLE_FAILED, self.code - 2300)
            }
            _ => return None,
        };
        prefix_table.get(usize::from(code)).copied()
    }
}

impl fmt::Display for SwitchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code_name(), self.experimenter) {
            (Some(name), _) => write!(f, "{name}")?,
            (None, Some(exp)) => write!(f, "experimenter {exp:#x} error {}", self.code)?,
            (None, None) => write!(f, "{} code {}", self.error_type.name(), self.code)?,
        }
        write!(
            f,
            " (type {}, code {}, xid {:#x})",
            self.type_code, self.code, self.xid
        )
    }
}

const HELLO_FAILED: [&str; 2] = ["OFPHFC_INCOMPATIBLE", "OFPHFC_EPERM"];
const BAD_REQUEST: [&str; 16] = [
    "OFPBRC_BAD_VERSION",
    "OFPBRC_BAD_TYPE",
    "OFPBRC_BAD_MULTIPART",
    "OFPBRC_BAD_EXPERIMENTER",
    "OFPBRC_BAD_EXP_TYPE",
    "OFPBRC_EPERM",
    "OFPBRC_BAD_LEN",
    "OFPBRC_BUFFER_EMPTY",
    "OFPBRC_BUFFER_UNKNOWN",
    "OFPBRC_BAD_TABLE_ID",
    "OFPBRC_IS_SLAVE",
    "OFPBRC_BAD_PORT",
    "OFPBRC_BAD_PACKET",
    "OFPBRC_MULTIPART_BUFFER_OVERFLOW",
    "OFPBRC_MULTIPART_REQUEST_TIMEOUT",
    "OFPBRC_MULTIPART_REPLY_TIMEOUT",
];
const BAD_ACTION: [&str; 16] = [
    "OFPBAC_BAD_TYPE",
    "OFPBAC_BAD_LEN",
    "OFPBAC_BAD_EXPERIMENTER",
    "OFPBAC_BAD_EXP_TYPE",
    "OFPBAC_BAD_OUT_PORT",
    "OFPBAC_BAD_ARGUMENT",
    "OFPBAC_EPERM",
    "OFPBAC_TOO_MANY",
    "OFPBAC_BAD_QUEUE",
    "OFPBAC_BAD_OUT_GROUP",
    "OFPBAC_MATCH_INCONSISTENT",
    "OFPBAC_UNSUPPORTED_ORDER",
    "OFPBAC_BAD_TAG",
    "OFPBAC_BAD_SET_TYPE",
    "OFPBAC_BAD_SET_LEN",
    "OFPBAC_BAD_SET_ARGUMENT",
];
const BAD_INSTRUCTION: [&str; 9] = [
    "OFPBIC_UNKNOWN_INST",
    "OFPBIC_UNSUP_INST",
    "OFPBIC_BAD_TABLE_ID",
    "OFPBIC_UNSUP_METADATA",
    "OFPBIC_UNSUP_METADATA_MASK",
    "OFPBIC_BAD_EXPERIMENTER",
    "OFPBIC_BAD_EXP_TYPE",
    "OFPBIC_BAD_LEN",
    "OFPBIC_EPERM",
];
const BAD_MATCH: [&str; 12] = [
    "OFPBMC_BAD_TYPE",
    "OFPBMC_BAD_LEN",
    "OFPBMC_BAD_TAG",
    "OFPBMC_BAD_DL_ADDR_MASK",
    "OFPBMC_BAD_NW_ADDR_MASK",
    "OFPBMC_BAD_WILDCARDS",
    "OFPBMC_BAD_FIELD",
    "OFPBMC_BAD_VALUE",
    "OFPBMC_BAD_MASK",
    "OFPBMC_BAD_PREREQ",
    "OFPBMC_DUP_FIELD",
    "OFPBMC_EPERM",
];
const FLOW_MOD_FAILED: [&str; 11] = [
    "OFPFMFC_UNKNOWN",
    "OFPFMFC_TABLE_FULL",
    "OFPFMFC_BAD_TABLE_ID",
    "OFPFMFC_OVERLAP",
    "OFPFMFC_EPERM",
    "OFPFMFC_BAD_TIMEOUT",
    "OFPFMFC_BAD_COMMAND",
    "OFPFMFC_BAD_FLAGS",
    "OFPFMFC_CANT_SYNC",
    "OFPFMFC_BAD_PRIORITY",
    "OFPFMFC_IS_SYNC",
];
const METER_MOD_FAILED: [&str; 12] = [
    "OFPMMFC_UNKNOWN",
    "OFPMMFC_METER_EXISTS",
    "OFPMMFC_INVALID_METER",
    "OFPMMFC_UNKNOWN_METER",
    "OFPMMFC_BAD_COMMAND",
    "OFPMMFC_BAD_FLAGS",
    "OFPMMFC_BAD_RATE",
    "OFPMMFC_BAD_BURST",
    "OFPMMFC_BAD_BAND",
    "OFPMMFC_BAD_BAND_VALUE",
    "OFPMMFC_OUT_OF_METERS",
    "OFPMMFC_OUT_OF_BANDS",
];
const BUNDLE_FAILED: [&str; 16] = [
    "OFPBFC_UNKNOWN",
    "OFPBFC_EPERM",
    "OFPBFC_BAD_ID",
    "OFPBFC_BUNDLE_EXIST",
    "OFPBFC_BUNDLE_CLOSED",
    "OFPBFC_OUT_OF_BUNDLES",
    "OFPBFC_BAD_TYPE",
    "OFPBFC_BAD_FLAGS",
    "OFPBFC_MSG_BAD_LEN",
    "OFPBFC_MSG_BAD_XID",
    "OFPBFC_MSG_UNSUP",
    "OFPBFC_MSG_CONFLICT",
    "OFPBFC_MSG_TOO_MANY",
    "OFPBFC_MSG_FAILED",
    "OFPBFC_TIMEOUT",
    "OFPBFC_BUNDLE_IN_PROGRESS",
];
