//! A minimal client of Open vSwitch's unixctl protocol — what `ovs-appctl`
//! speaks: JSON-RPC 1.0 over the daemon's control socket, one request
//! `{"method": M, "params": [args…], "id": N}` and one reply
//! `{"result": TEXT, "error": null, "id": N}` (or an `error` string).
//!
//! The agent uses it for what OVSDB and OpenFlow do not carry: the datapath
//! flows of each port and whether the datapath says they are offloaded
//! (`dpctl/dump-flows -m --names`, see [`datapath_flows`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::ovsdb::framing::JsonFramer;

#[derive(Debug, thiserror::Error)]
pub enum UnixctlError {
    #[error("unixctl {socket}")]
    Io {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unixctl {socket}: no answer to {method} within {timeout:?}")]
    Timeout {
        socket: String,
        method: String,
        timeout: Duration,
    },
    #[error("unixctl {socket}: {method} failed: {message}")]
    Failed {
        socket: String,
        method: String,
        message: String,
    },
    #[error("unixctl {socket}: malformed reply: {message}")]
    Malformed { socket: String, message: String },
    #[error("unixctl {socket}: the reply is not JSON")]
    Json {
        socket: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Runs one command on the daemon behind `socket` and returns its text.
pub async fn call(
    socket: &Path,
    method: &str,
    params: &[&str],
    timeout: Duration,
) -> Result<String, UnixctlError> {
    let name = socket.display().to_string();
    let io = |source| UnixctlError::Io {
        socket: name.clone(),
        source,
    };
    let exchange = async {
        let mut stream = UnixStream::connect(socket).await.map_err(io)?;
        let request = json!({"method": method, "params": params, "id": 0});
        stream
            .write_all(request.to_string().as_bytes())
            .await
            .map_err(io)?;
        let mut framer = JsonFramer::default();
        loop {
            if let Some(frame) = framer.next_frame().map_err(|e| UnixctlError::Malformed {
                socket: name.clone(),
                message: e.to_string(),
            })? {
                return Ok(frame);
            }
            let n = stream.read_buf(framer.buffer_mut()).await.map_err(io)?;
            if n == 0 {
                return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    };
    let frame = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| UnixctlError::Timeout {
            socket: name.clone(),
            method: method.to_string(),
            timeout,
        })??;
    decode_reply(&name, method, &frame)
}

/// Decodes one framed reply of the daemon behind `socket` to `method`: the
/// result text, or the daemon's error. Pure; [`call`] uses it on what it
/// read (the fuzz target `unixctl_reply` feeds it arbitrary frames).
pub fn decode_reply(socket: &str, method: &str, frame: &[u8]) -> Result<String, UnixctlError> {
    let reply: Value = serde_json::from_slice(frame).map_err(|source| UnixctlError::Json {
        socket: socket.to_string(),
        source,
    })?;
    match (&reply["error"], &reply["result"]) {
        (Value::Null, Value::String(text)) => Ok(text.clone()),
        (Value::String(message), _) => Err(UnixctlError::Failed {
            socket: socket.to_string(),
            method: method.to_string(),
            message: message.trim().to_string(),
        }),
        _ => Err(UnixctlError::Malformed {
            socket: socket.to_string(),
            message: format!("neither result text nor error: {reply}"),
        }),
    }
}

/// ovs-vswitchd's control socket in `rundir` (the directory of the OVSDB
/// socket): `ovs-vswitchd.<pid>.ctl` of the pid in `ovs-vswitchd.pid` as a
/// packaged OVS names it, else `ovs-vswitchd.ctl` or the sandbox's
/// `vswitchd.ctl` (see [`crate::sandbox`]).
pub fn vswitchd_socket(rundir: &Path) -> Option<PathBuf> {
    let by_pid = std::fs::read_to_string(rundir.join("ovs-vswitchd.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .map(|pid| rundir.join(format!("ovs-vswitchd.{pid}.ctl")));
    by_pid
        .into_iter()
        .chain([rundir.join("ovs-vswitchd.ctl"), rundir.join("vswitchd.ctl")])
        .find(|p| p.exists())
}

/// Datapath flows of one input port, as the datapath reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatapathFlows {
    pub total: usize,
    /// Flows the datapath says are in hardware (`offloaded:yes`) or partly
    /// (`offloaded:partial`, the netdev datapath's mark-and-recirculate).
    pub offloaded: usize,
}

/// Counts datapath flows per input port name in the text of
/// `dpctl/dump-flows -m --names`: each line is one flow, its match has
/// `in_port(NAME)`, and with `-m` an offloaded flow says `offloaded:yes` or
/// `offloaded:partial`.
pub fn parse_datapath_flows(text: &str) -> BTreeMap<String, DatapathFlows> {
    let mut out: BTreeMap<String, DatapathFlows> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.split("in_port(").nth(1) else {
            continue;
        };
        let Some(port) = rest.split(')').next() else {
            continue;
        };
        let entry = out.entry(port.to_string()).or_default();
        entry.total += 1;
        if line.contains("offloaded:yes") || line.contains("offloaded:partial") {
            entry.offloaded += 1;
        }
    }
    out
}

/// [`parse_datapath_flows`] of ovs-vswitchd's current datapath flows.
pub async fn datapath_flows(
    socket: &Path,
    timeout: Duration,
) -> Result<BTreeMap<String, DatapathFlows>, UnixctlError> {
    let text = call(socket, "dpctl/dump-flows", &["-m", "--names"], timeout).await?;
    Ok(parse_datapath_flows(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reply shapes of `lib/unixctl.c` (JSON-RPC 1.0): result text, an
    /// error string, and anything else as malformed, never a panic.
    #[test]
    fn decodes_result_error_and_malformed_replies() {
        let ok = decode_reply("s", "m", br#"{"id":0,"result":"text\n","error":null}"#);
        assert_eq!(ok.unwrap(), "text\n");
        let failed = decode_reply(
            "s",
            "m",
            br#"{"id":0,"result":null,"error":"no such command\n"}"#,
        );
        assert!(
            matches!(failed, Err(UnixctlError::Failed { message, .. }) if message == "no such command")
        );
        for bad in [&b"[1]"[..], b"{\"result\":7}", b"{", b"\"x\""] {
            assert!(matches!(
                decode_reply("s", "m", bad),
                Err(UnixctlError::Malformed { .. } | UnixctlError::Json { .. })
            ));
        }
    }

    /// Lines in the layout of OVS 3.1's `format_dpif_flow` with `-m
    /// --names` (the kernel datapath with TC offload says `dp:tc`).
    #[test]
    fn counts_flows_and_offloads_per_in_port() {
        let text = "\
ufid:1b2c, recirc_id(0),dp_hash(0/0),skb_priority(0/0),in_port(fn-a1),skb_mark(0/0),eth(src=02:00:00:00:00:01,dst=02:00:00:00:00:02),eth_type(0x0800), packets:3, bytes:294, used:0.4s, dp:ovs, actions:fn-a2
ufid:2c3d, recirc_id(0),in_port(fn-a1),eth_type(0x0806), packets:1, bytes:42, used:1.0s, offloaded:yes, dp:tc, actions:fn-a2
ufid:3d4e, recirc_id(0x1),in_port(pf0vf3),eth_type(0x0800), packets:9, bytes:900, used:0.1s, offloaded:partial, dp:ovs, actions:ct(zone=3),recirc(0x2)
";
        let flows = parse_datapath_flows(text);
        assert_eq!(
            flows["fn-a1"],
            DatapathFlows {
                total: 2,
                offloaded: 1
            }
        );
        assert_eq!(
            flows["pf0vf3"],
            DatapathFlows {
                total: 1,
                offloaded: 1
            }
        );
        assert_eq!(flows.len(), 2);
    }
}
