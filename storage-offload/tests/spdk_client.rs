//! The JSON-RPC client against a scripted unix-socket peer: concurrent
//! callers answered out of order, error codes, refusal of methods the server
//! does not offer, and a dropped connection.

use std::time::Duration;

use serde_json::{Value, json};
use storage_offload::spdk::methods::*;
use storage_offload::spdk::{RpcErrorKind, SpdkClient, SpdkError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Reads `n` requests from the stream (back to back, any chunking).
async fn read_requests(s: &mut UnixStream, n: usize) -> Vec<Value> {
    let mut split = dpu_jsonrpc::Framer::objects_and_arrays(dpu_jsonrpc::DEFAULT_MAX_LEN);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < n {
        let k = s.read(&mut buf).await.unwrap();
        assert!(k > 0, "client closed");
        split.push(&buf[..k]);
        while let Some(v) = split.next_frame().unwrap() {
            out.push(serde_json::from_slice(&v).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn concurrent_callers_get_their_own_answers() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let client = SpdkClient::from_stream(a);
    let server = tokio::spawn(async move {
        let reqs = read_requests(&mut b, 8).await;
        // Answer in reverse order, all in one write, no delimiter.
        let mut wire = Vec::new();
        for r in reqs.iter().rev() {
            let name = r["params"]["name"].clone();
            wire.extend(
                serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": r["id"], "result": name}))
                    .unwrap(),
            );
        }
        b.write_all(&wire).await.unwrap();
        b
    });
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("Malloc{i}");
            let got = c
                .call(&BdevMallocCreate {
                    name: Some(name.clone()),
                    block_size: 512,
                    num_blocks: 1,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(got, name);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let _keep_open = server.await.unwrap();
}

#[tokio::test]
async fn error_codes_are_typed() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let client = SpdkClient::from_stream(a);
    let server = tokio::spawn(async move {
        for code in [-1, -32601, -32602, -32603, -32700, -32600, -17] {
            let r = read_requests(&mut b, 1).await.remove(0);
            let resp = json!({"jsonrpc": "2.0", "id": r["id"],
                "error": {"code": code, "message": "no"}});
            b.write_all(&serde_json::to_vec(&resp).unwrap())
                .await
                .unwrap();
        }
        b
    });
    let kinds = [
        RpcErrorKind::InvalidState,
        RpcErrorKind::MethodNotFound,
        RpcErrorKind::InvalidParams,
        RpcErrorKind::Internal,
        RpcErrorKind::Parse,
        RpcErrorKind::InvalidRequest,
        RpcErrorKind::Other,
    ];
    for kind in kinds {
        match client.call(&SpdkGetVersion {}).await {
            Err(SpdkError::Rpc { method, error }) => {
                assert_eq!(method, "spdk_get_version");
                assert_eq!(error.kind(), kind);
            }
            other => panic!("{other:?}"),
        }
    }
    let _keep_open = server.await.unwrap();
}

#[tokio::test]
async fn methods_the_server_lacks_are_refused_before_sending() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let client = SpdkClient::from_stream(a);
    let server = tokio::spawn(async move {
        let r = read_requests(&mut b, 1).await.remove(0);
        assert_eq!(r["method"], "rpc_get_methods");
        assert!(r.get("params").is_none(), "{r}");
        let resp = json!({"jsonrpc": "2.0", "id": r["id"], "result": ["spdk_get_version"]});
        b.write_all(&serde_json::to_vec(&resp).unwrap())
            .await
            .unwrap();
        b
    });
    client.load_methods().await.unwrap();
    let err = client
        .call(&VhostDeleteController { ctrlr: "x".into() })
        .await
        .unwrap_err();
    assert!(matches!(err, SpdkError::Unsupported { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("does not offer vhost_delete_controller")
    );
    let _keep_open = server.await.unwrap();
}

#[tokio::test]
async fn a_dropped_connection_fails_pending_and_later_calls() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let client = SpdkClient::from_stream(a).with_timeout(Duration::from_secs(5));
    let server = tokio::spawn(async move {
        read_requests(&mut b, 1).await;
        drop(b);
    });
    let err = client.call(&SpdkGetVersion {}).await.unwrap_err();
    assert!(matches!(err, SpdkError::Closed), "{err:?}");
    server.await.unwrap();
    let err = client.call(&SpdkGetVersion {}).await.unwrap_err();
    assert!(matches!(err, SpdkError::Closed), "{err:?}");
}
