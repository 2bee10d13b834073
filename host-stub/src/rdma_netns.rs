//! Moving an RDMA device into a container's network namespace, for hosts
//! whose RDMA subsystem runs in exclusive network-namespace mode (`rdma
//! system set netns exclusive`): there a device is visible and openable only
//! from its own namespace, so a container gets its function's RDMA device
//! only once it has been moved there. This is what `rdma dev set <dev> netns
//! <ns>` does, spoken directly over `NETLINK_RDMA`
//! (`include/uapi/rdma/rdma_netlink.h`): `RDMA_NLDEV_CMD_GET` (dump) finds
//! the device's index by name, `RDMA_NLDEV_CMD_SET` with
//! `RDMA_NLDEV_ATTR_DEV_INDEX` and `RDMA_NLDEV_NET_NS_FD` moves it.
//!
//! It runs as an OCI `createRuntime` hook the CDI spec names
//! (`host-stub rdma-netns-hook <dev>`): the runtime hands the container's
//! state (JSON with its `pid`) on stdin once the namespaces exist and before
//! the workload starts. The kernel gives the device back to the initial
//! namespace when the container's namespace goes away.
//!
//! Message building and reply parsing are pure; only [`move_device`] opens
//! a socket and a namespace file.

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use dpu_netlink::{Socket, attr, msg};
use serde::Deserialize;

/// `NETLINK_RDMA` (`include/uapi/linux/netlink.h`).
pub const NETLINK_RDMA: i32 = 20;
/// `RDMA_NL_NLDEV`, the RDMA device interface client.
const RDMA_NL_NLDEV: u16 = 5;
const RDMA_NLDEV_CMD_GET: u16 = 1;
const RDMA_NLDEV_CMD_SET: u16 = 2;
const RDMA_NLDEV_ATTR_DEV_INDEX: u16 = 1;
const RDMA_NLDEV_ATTR_DEV_NAME: u16 = 2;
const RDMA_NLDEV_NET_NS_FD: u16 = 68;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;

/// `RDMA_NL_GET_TYPE(client, op)`.
const fn nl_type(op: u16) -> u16 {
    (RDMA_NL_NLDEV << 10) + op
}

#[derive(Debug, thiserror::Error)]
pub enum RdmaNetnsError {
    #[error("container state on stdin: {0} (an OCI hook gets the state JSON with \"pid\")")]
    State(String),
    #[error("cannot open the network namespace of pid {pid} ({path})")]
    Netns {
        pid: u32,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("listing RDMA devices failed")]
    List(#[source] dpu_netlink::Error),
    #[error("no RDMA device named {0:?} (in this network namespace)")]
    NoDevice(String),
    #[error(
        "moving RDMA device {device} into the network namespace of pid {pid} failed (needs exclusive mode, `rdma system set netns exclusive`, and a driver that supports it)"
    )]
    Move {
        device: String,
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Deserialize)]
struct OciState {
    pid: Option<i64>,
}

/// The container's pid from the OCI state JSON a hook reads on stdin.
pub fn container_pid(state: &[u8]) -> Result<u32, RdmaNetnsError> {
    let s: OciState = serde_json::from_slice(state)
        .map_err(|e| RdmaNetnsError::State(format!("not JSON: {e}")))?;
    let pid = s
        .pid
        .ok_or_else(|| RdmaNetnsError::State("pid: missing".into()))?;
    u32::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| RdmaNetnsError::State(format!("pid: {pid} is not a process id")))
}

/// The dump request listing every RDMA device.
pub fn list_request() -> Vec<u8> {
    msg::message(
        nl_type(RDMA_NLDEV_CMD_GET),
        NLM_F_REQUEST | NLM_F_DUMP,
        0,
        &[],
    )
}

/// The request moving device `index` into the namespace open as `ns_fd`.
pub fn move_request(index: u32, ns_fd: u32) -> Vec<u8> {
    let mut body = Vec::new();
    attr::put_u32(&mut body, RDMA_NLDEV_ATTR_DEV_INDEX, index);
    attr::put_u32(&mut body, RDMA_NLDEV_NET_NS_FD, ns_fd);
    msg::message(
        nl_type(RDMA_NLDEV_CMD_SET),
        NLM_F_REQUEST | NLM_F_ACK,
        0,
        &body,
    )
}

/// `(index, name)` of one device in a dump reply's payload (attributes
/// right after the netlink header); `None` when either is missing.
pub fn parse_device(payload: &[u8]) -> Option<(u32, String)> {
    let mut index = None;
    let mut name = None;
    for (ty, value) in attr::attrs(payload) {
        match ty {
            RDMA_NLDEV_ATTR_DEV_INDEX => index = attr::u32(value).ok(),
            RDMA_NLDEV_ATTR_DEV_NAME => name = Some(attr::string(value)),
            _ => {}
        }
    }
    Some((index?, name?))
}

/// Moves RDMA device `device` into the network namespace of process `pid`
/// (`/proc/<pid>/ns/net`).
pub fn move_device(device: &str, pid: u32) -> Result<(), RdmaNetnsError> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let ns = std::fs::File::open(&path).map_err(|source| RdmaNetnsError::Netns {
        pid,
        path: path.clone(),
        source,
    })?;
    let mut sock = Socket::open(NETLINK_RDMA)
        .map_err(RdmaNetnsError::List)?
        .with_timeout(Some(std::time::Duration::from_secs(5)));
    let replies = sock
        .request(&mut list_request())
        .map_err(RdmaNetnsError::List)?;
    let index = replies
        .iter()
        .filter_map(|p| parse_device(p))
        .find(|(_, name)| name == device)
        .map(|(index, _)| index)
        .ok_or_else(|| RdmaNetnsError::NoDevice(device.to_string()))?;
    let fd = u32::try_from(ns.as_raw_fd()).unwrap_or(u32::MAX);
    sock.ack(&mut move_request(index, fd))
        .map_err(|e| RdmaNetnsError::Move {
            device: device.to_string(),
            pid,
            source: e.into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_nldev_messages() {
        let m = move_request(3, 7);
        let h = dpu_netlink::Header::parse(&m).unwrap();
        assert_eq!(h.ty, (5 << 10) + 2, "RDMA_NL_GET_TYPE(RDMA_NL_NLDEV, SET)");
        assert_eq!(h.flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(h.len as usize, m.len());
        let attrs: Vec<(u16, Vec<u8>)> = attr::attrs(&m[16..])
            .map(|(t, v)| (t, v.to_vec()))
            .collect();
        assert_eq!(
            attrs,
            [
                (1, 3u32.to_ne_bytes().to_vec()),
                (68, 7u32.to_ne_bytes().to_vec())
            ]
        );
        let l = list_request();
        let h = dpu_netlink::Header::parse(&l).unwrap();
        assert_eq!(h.ty, (5 << 10) + 1);
        assert_eq!(h.flags, NLM_F_REQUEST | NLM_F_DUMP);
    }

    #[test]
    fn device_replies_and_states() {
        let mut p = Vec::new();
        attr::put_u32(&mut p, RDMA_NLDEV_ATTR_DEV_INDEX, 4);
        attr::put_str(&mut p, RDMA_NLDEV_ATTR_DEV_NAME, "rxe0");
        assert_eq!(parse_device(&p), Some((4, "rxe0".to_string())));
        assert_eq!(parse_device(&p[..8]), None, "no name");
        assert_eq!(parse_device(&[1, 2, 3]), None);

        assert_eq!(
            container_pid(br#"{"ociVersion":"1.0.2","id":"c","pid":42}"#).unwrap(),
            42
        );
        for (bad, says) in [
            (&b"{}"[..], "pid: missing"),
            (b"{\"pid\": 0}", "pid: 0"),
            (b"{\"pid\": -3}", "pid: -3"),
            (b"nope", "not JSON"),
        ] {
            let e = container_pid(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse_device(&bytes);
            let _ = container_pid(&bytes);
        }
    }
}
