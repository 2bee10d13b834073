//! XFRM netlink (NETLINK_XFRM): the typed messages the agent sends and reads,
//! their byte encoding, and a blocking socket ([`socket::XfrmSocket`]).
//!
//! Owns: `XFRM_MSG_NEWSA`/`DELSA`/`GETSA` (dump), `XFRM_MSG_UPDPOLICY`/
//! `DELPOLICY`/`GETPOLICY` (dump), with the attributes the agent uses:
//! `XFRMA_ALG_AEAD` (`rfc4106(gcm(aes))`), `XFRMA_REPLAY_ESN_VAL`,
//! `XFRMA_OFFLOAD_DEV` (incl. `XFRM_OFFLOAD_PACKET`, Linux ≥ 6.2),
//! `XFRMA_MARK`, `XFRMA_IF_ID`, `XFRMA_TMPL`. Other attributes of foreign
//! state are skipped when decoding. Struct layouts are those of
//! `include/uapi/linux/xfrm.h` on 64-bit Linux (x86-64, aarch64): native
//! byte order, `__be` fields and addresses in network order.
//!
//! Limits: IPv4 and IPv6 addresses decode, but the agent programs IPv4 only
//! (the API's tunnels are IPv4). Key bytes read back from the kernel stay in
//! [`SaKey`](crate::keys::SaKey) (zeroizing, redacted).

pub mod socket;
pub mod wire;

pub use wire::*;
