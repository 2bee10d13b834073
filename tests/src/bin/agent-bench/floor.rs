//! The write floor: the cheapest server that answers the bench's PUTs the
//! way the agent has to, and does nothing else. It speaks mutual TLS with
//! the agent's own listener configuration (`dpu_crypto::mtls::server_config`)
//! and the agent's certificates. It serves HTTP/2 through the same hyper
//! stack, parses each body as JSON, and answers only once the body is on
//! disk: appended to one file and `fdatasync`ed, concurrent writers grouped
//! into one sync the way the store groups its commits. No validation, no
//! store, no controllers, no events.
//!
//! It runs in its own process (`agent-bench --serve-floor PKI PORT DIR`,
//! started by the bench) on the same cores and under the same paced load
//! as the agent. Its latency is what this machine, this HTTP/TLS stack and
//! this disk cost before the agent does any work of its own.

use std::convert::Infallible;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use dpu_crypto::mtls::{TlsFiles, server_config};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio_rustls::TlsAcceptor;

/// Bodies appended by concurrent writers, synced in groups: a writer joins
/// the pending group; whoever takes the commit lock first writes and syncs
/// every group up to the pending one, and the others find theirs done.
struct GroupLog {
    pending: Mutex<Pending>,
    committer: Mutex<Committer>,
}

struct Pending {
    buf: Vec<u8>,
    /// The group the pending bytes will be committed as.
    seq: u64,
}

struct Committer {
    file: File,
    /// The last group on disk.
    done: u64,
}

impl GroupLog {
    fn create(path: &Path) -> std::io::Result<GroupLog> {
        Ok(GroupLog {
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                seq: 1,
            }),
            committer: Mutex::new(Committer {
                file: File::create(path)?,
                done: 0,
            }),
        })
    }

    /// Returns once `record` is on disk.
    fn append(&self, record: &[u8]) -> std::io::Result<()> {
        let poisoned = || std::io::Error::other("lock poisoned");
        let seq = {
            let mut p = self.pending.lock().map_err(|_| poisoned())?;
            p.buf.extend_from_slice(record);
            p.buf.push(b'\n');
            p.seq
        };
        let mut c = self.committer.lock().map_err(|_| poisoned())?;
        if c.done < seq {
            // Nobody committed our group while we waited for the lock, so
            // it is still the pending one.
            let buf = {
                let mut p = self.pending.lock().map_err(|_| poisoned())?;
                p.seq += 1;
                std::mem::take(&mut p.buf)
            };
            c.file.write_all(&buf)?;
            c.file.sync_data()?;
            c.done = seq;
        }
        Ok(())
    }
}

/// Serves until killed. `pki` is the agent's PKI directory (`server.pem`,
/// `server-key.pem`, `ca.pem`), `dir` where the log file goes.
pub(crate) fn serve(pki: &Path, port: u16, dir: &Path) -> Result<(), String> {
    let config = server_config(&TlsFiles {
        cert: pki.join("server.pem"),
        key: pki.join("server-key.pem"),
        client_ca: pki.join("ca.pem"),
    })
    .map_err(|e| format!("floor TLS config: {e}"))?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let log =
        Arc::new(GroupLog::create(&dir.join("floor.log")).map_err(|e| format!("floor log: {e}"))?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("floor runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| format!("floor listen on 127.0.0.1:{port}: {e}"))?;
        loop {
            let (tcp, _) = listener
                .accept()
                .await
                .map_err(|e| format!("floor accept: {e}"))?;
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| handle(req, log.clone()));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    })
}

async fn handle(
    req: Request<Incoming>,
    log: Arc<GroupLog>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => (StatusCode::OK, Bytes::from_static(b"ok")),
        (&Method::PUT, path) if path.starts_with("/v1/networks/") => put(req, log).await,
        _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"{}")),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    Ok(resp)
}

/// Parses the body as JSON, makes it durable, answers it back.
async fn put(req: Request<Incoming>, log: Arc<GroupLog>) -> (StatusCode, Bytes) {
    let bad = |why: String| (StatusCode::BAD_REQUEST, Bytes::from(why));
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad(format!("body: {e}")),
    };
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&body) {
        return bad(format!("body: {e}"));
    }
    match tokio::task::spawn_blocking(move || log.append(&body).map(|()| body)).await {
        Ok(Ok(body)) => (StatusCode::OK, body),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from(e.to_string()),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from(e.to_string()),
        ),
    }
}
