//! A minimal client of Open vSwitch's unixctl protocol — what `ovs-appctl`
//! speaks: JSON-RPC 1.0 over the daemon's control socket, one request
//! `{"method": M, "params": [args…], "id": N}` and one reply
//! `{"result": TEXT, "error": null, "id": N}` (or an `error` string).
//!
//! The agent uses it for what OVSDB and OpenFlow do not carry: the datapath
//! flows of each port and whether the datapath says they are offloaded
//! (`dpctl/dump-flows -m --names`, see [`datapath_flows`]) and its
//! datapaths' lookup counters (`dpctl/show`, see [`datapath_lookups`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dpu_jsonrpc::{Connection, ConnectionError, Failure, Message, MessageError, Options, Version};
use serde_json::Value;
use tokio::net::UnixStream;

/// Replies larger than this are refused (a dump of many datapath flows is
/// a few MiB).
const MAX_REPLY_LEN: usize = 64 * 1024 * 1024;

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
    #[error("unixctl {socket}: the reply is not a JSON-RPC message")]
    Message {
        socket: String,
        #[source]
        source: MessageError,
    },
}

/// Runs one command on the daemon behind `socket` and returns its text.
/// One connection per command, as `ovs-appctl` does, through the shared
/// JSON-RPC 1.0 connection of `dpu-jsonrpc`.
pub async fn call(
    socket: &Path,
    method: &str,
    params: &[&str],
    timeout: Duration,
) -> Result<String, UnixctlError> {
    let name = socket.display().to_string();
    let exchange = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| UnixctlError::Io {
                socket: name.clone(),
                source,
            })?;
        let (reader, writer) = stream.into_split();
        let options = Options::new(Version::V1).max_len(MAX_REPLY_LEN);
        let conn = Connection::spawn(reader, writer, options);
        let outcome = conn.call(method, Value::from(params.to_vec())).await;
        Ok(match outcome {
            Ok(result) => interpret(&name, method, result, Value::Null),
            Err(Failure::Rejected(error) | Failure::Unattributed(error)) => {
                interpret(&name, method, Value::Null, error)
            }
            Err(Failure::Lost(lost)) => Err(lost_error(&name, lost)),
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| UnixctlError::Timeout {
            socket: name.clone(),
            method: method.to_string(),
            timeout,
        })?
        .and_then(|r| r)
}

fn lost_error(socket: &str, lost: ConnectionError) -> UnixctlError {
    let socket = socket.to_string();
    match lost {
        ConnectionError::Eof | ConnectionError::Closed => UnixctlError::Io {
            socket,
            source: std::io::ErrorKind::UnexpectedEof.into(),
        },
        ConnectionError::Io(e) => UnixctlError::Io {
            socket,
            source: std::io::Error::new(e.kind(), e),
        },
        other @ (ConnectionError::Framing(_) | ConnectionError::Message(_)) => {
            UnixctlError::Malformed {
                socket,
                message: match std::error::Error::source(&other) {
                    Some(source) => format!("{other}: {source}"),
                    None => other.to_string(),
                },
            }
        }
    }
}

/// Decodes one framed reply of the daemon behind `socket` to `method`: the
/// result text, or the daemon's error. Pure; the fuzz target
/// `unixctl_reply` feeds it arbitrary frames.
pub fn decode_reply(socket: &str, method: &str, frame: &[u8]) -> Result<String, UnixctlError> {
    let malformed = |message: String| UnixctlError::Malformed {
        socket: socket.to_string(),
        message,
    };
    match Message::decode(frame, Version::V1) {
        Ok(Message::Response { result, error, .. }) => interpret(socket, method, result, error),
        Ok(other) => Err(malformed(format!("not a reply: {other:?}"))),
        Err(source) => Err(UnixctlError::Message {
            socket: socket.to_string(),
            source,
        }),
    }
}

/// The reply shapes of `lib/unixctl.c`: result text with a null error, or an
/// error string.
fn interpret(
    socket: &str,
    method: &str,
    result: Value,
    error: Value,
) -> Result<String, UnixctlError> {
    match (error, result) {
        (Value::Null, Value::String(text)) => Ok(text),
        (Value::String(message), _) => Err(UnixctlError::Failed {
            socket: socket.to_string(),
            method: method.to_string(),
            message: message.trim().to_string(),
        }),
        (error, result) => Err(UnixctlError::Malformed {
            socket: socket.to_string(),
            message: format!("neither result text nor error: result {result}, error {error}"),
        }),
    }
}

/// ovs-vswitchd's control socket in `rundir` (the directory of the OVSDB
/// socket): `ovs-vswitchd.<pid>.ctl` of the pid in `ovs-vswitchd.pid` as a
/// packaged OVS names it, else `ovs-vswitchd.ctl` or the sandbox's
/// `vswitchd.ctl` (see `crate::sandbox`, built with the `sandbox` feature).
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

/// One datapath's packet counters since it was created, as `dpctl/show`
/// prints them (`lib/dpctl.c`, `show_dpif`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatapathLookups {
    /// `type@name`, e.g. `system@ovs-system` or `netdev@ovs-netdev`.
    pub datapath: String,
    /// Packets that matched a datapath flow.
    pub hit: u64,
    /// Packets that matched none and were sent up to ovs-vswitchd (upcalls).
    pub missed: u64,
    /// Packets that matched none and were dropped before ovs-vswitchd saw
    /// them: the upcall queue was full, or no handler thread listens (as
    /// with Open vSwitch 3.1.0 when the datapath is made in the first 10 s
    /// after boot). Traffic that needs an upcall, first packets of every
    /// new flow among them, is then lost.
    pub lost: u64,
}

/// The lookups of each datapath in the text of `dpctl/show`: a line
/// `TYPE@NAME:` starts a datapath, its indented `lookups: hit:N missed:N
/// lost:N` line gives the counters. A datapath without that line (its
/// statistics could not be read) is left out; so is anything else.
pub fn parse_datapath_show(text: &str) -> Vec<DatapathLookups> {
    let mut out = Vec::new();
    let mut current: Option<&str> = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            current = line.strip_suffix(':').filter(|n| n.contains('@'));
            continue;
        }
        let (Some(datapath), Some(rest)) = (current, line.trim().strip_prefix("lookups:")) else {
            continue;
        };
        let mut counts = [None; 3];
        for word in rest.split_whitespace() {
            let Some((key, value)) = word.split_once(':') else {
                continue;
            };
            let slot = match key {
                "hit" => 0,
                "missed" => 1,
                "lost" => 2,
                _ => continue,
            };
            counts[slot] = value.parse::<u64>().ok();
        }
        if let [Some(hit), Some(missed), Some(lost)] = counts {
            out.push(DatapathLookups {
                datapath: datapath.to_string(),
                hit,
                missed,
                lost,
            });
        }
        current = None;
    }
    out
}

/// [`parse_datapath_show`] of every datapath ovs-vswitchd has.
pub async fn datapath_lookups(
    socket: &Path,
    timeout: Duration,
) -> Result<Vec<DatapathLookups>, UnixctlError> {
    let text = call(socket, "dpctl/show", &[], timeout).await?;
    Ok(parse_datapath_show(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text `show_dpif` of `lib/dpctl.c` prints (Open vSwitch 3.1):
    /// a kernel datapath with masks and cache lines, a userspace one
    /// without, ports with and without a type; and what is not that.
    #[test]
    fn parses_the_lookups_of_each_datapath() {
        let text = "system@ovs-system:\n  lookups: hit:120 missed:7 lost:7\n  flows: 2\n  \
                    masks: hit:130 total:2 hit/pkt:1.02\n  cache: hit:100 hit-rate:78.74%\n  \
                    caches:\n    masks-cache: size:256\n  port 0: ovs-system (internal)\n  \
                    port 1: br-int (internal)\n  port 2: pf0vf0\n\
                    netdev@ovs-netdev:\n  lookups: hit:0 missed:3 lost:0\n  flows: 0\n  \
                    port 0: ovs-netdev (tap)\n";
        assert_eq!(
            parse_datapath_show(text),
            [
                DatapathLookups {
                    datapath: "system@ovs-system".into(),
                    hit: 120,
                    missed: 7,
                    lost: 7,
                },
                DatapathLookups {
                    datapath: "netdev@ovs-netdev".into(),
                    hit: 0,
                    missed: 3,
                    lost: 0,
                },
            ]
        );
        for bad in [
            "",
            "  lookups: hit:1 missed:2 lost:3\n",
            "system@ovs-system:\n  lookups: hit:1 missed:2\n",
            "system@ovs-system:\n  lookups: hit:x missed:2 lost:3\n",
            "no datapath:\n  lookups: hit:1 missed:2 lost:3\n",
        ] {
            assert_eq!(parse_datapath_show(bad), [], "{bad:?}");
        }
    }

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
                Err(UnixctlError::Malformed { .. } | UnixctlError::Message { .. })
            ));
        }
    }

    /// `call` against a scripted daemon on a unix socket: the request
    /// `ovs-appctl` sends, the text reply, the error reply, and a daemon
    /// that hangs up without answering.
    #[tokio::test]
    async fn call_speaks_to_a_scripted_daemon() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.ctl");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let daemon = tokio::spawn(async move {
            let mut requests = Vec::new();
            for reply in [
                Some(r#""result":"flows\n","error":null"#),
                Some(r#""result":null,"error":"\"x\" is not a valid command\n""#),
                None,
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut framer = dpu_jsonrpc::Framer::objects(4096);
                let frame = loop {
                    if let Some(f) = framer.next_frame().unwrap() {
                        break f;
                    }
                    assert!(s.read_buf(framer.buffer_mut()).await.unwrap() > 0);
                };
                let req: Value = serde_json::from_slice(&frame).unwrap();
                if let Some(reply) = reply {
                    let id = req["id"].to_string();
                    s.write_all(format!(r#"{{"id":{id},{reply}}}"#).as_bytes())
                        .await
                        .unwrap();
                }
                requests.push(req);
            }
            requests
        });
        let t = Duration::from_secs(5);
        let text = call(&path, "dpctl/dump-flows", &["-m", "--names"], t).await;
        assert_eq!(text.unwrap(), "flows\n");
        let failed = call(&path, "x", &[], t).await.unwrap_err();
        assert!(
            matches!(&failed, UnixctlError::Failed { message, .. } if message == "\"x\" is not a valid command"),
            "{failed}"
        );
        let hung_up = call(&path, "y", &[], t).await.unwrap_err();
        assert!(matches!(hung_up, UnixctlError::Io { .. }), "{hung_up}");
        let requests = daemon.await.unwrap();
        assert_eq!(requests[0]["method"], "dpctl/dump-flows");
        assert_eq!(requests[0]["params"], serde_json::json!(["-m", "--names"]));
        assert!(requests[0].get("jsonrpc").is_none());
        assert_eq!(requests[1]["params"], serde_json::json!([]));
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
