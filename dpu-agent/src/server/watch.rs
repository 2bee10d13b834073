//! `GET /v1/watch?since=REV`: newline-delimited JSON events after `REV`, from
//! the store's event log and then live, kept open. Our extensions: `kind`
//! and `id` filter the events, `tenant` restricts them (a tenant caller is
//! always restricted to its own), and `follow=false` returns the stored
//! events and closes.
//!
//! Nothing is lost between the log and the live feed: the live
//! subscription is taken before the log is read, and live events at or
//! below the last revision sent are skipped. A watcher too slow for the
//! live feed is disconnected; it resumes with `since` = the last revision it
//! saw.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dpu_api::object::Event;
use dpu_api::{Kind, Problem};
use futures_util::stream;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

use super::AppState;
use super::authz::{Caller, Operation, authorize};
use super::body::{QueryParams, label_param};
use super::error::ApiError;
use super::objects::{effective_tenant, parse_kind};

/// Log events read per page while catching up.
const PAGE: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    pub since: Option<u64>,
    pub kind: Option<String>,
    pub id: Option<String>,
    pub tenant: Option<String>,
    pub follow: Option<bool>,
}

/// Which events a watcher gets.
#[derive(Debug, Clone)]
pub struct Filter {
    pub kind: Option<Kind>,
    pub id: Option<String>,
    pub tenant: Option<String>,
}

impl Filter {
    pub fn matches(&self, ev: &Event) -> bool {
        self.kind.is_none_or(|k| ev.object.kind == k)
            && self.id.as_ref().is_none_or(|id| &ev.object.id == id)
            && self.tenant.as_ref().is_none_or(|t| &ev.object.tenant == t)
    }
}

fn line(ev: &Event) -> Bytes {
    let mut v = serde_json::to_vec(ev).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

pub async fn watch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    QueryParams(q): QueryParams<WatchQuery>,
) -> Result<Response, ApiError> {
    label_param("tenant", &q.tenant)?;
    label_param("id", &q.id)?;
    let tenant = effective_tenant(&caller, q.tenant);
    authorize(
        &caller,
        &Operation::Watch {
            tenant: tenant.as_deref(),
        },
    )?;
    let kind = q.kind.as_deref().map(parse_kind).transpose()?;
    let filter = Filter {
        kind,
        id: q.id,
        tenant,
    };
    let follow = q.follow.unwrap_or(true);

    let live = state.store.subscribe();
    let since = q.since.unwrap_or_else(|| state.store.revision());
    let store = state.store.clone();
    let first = state
        .store
        .offload(move || store.events_since(since, PAGE))
        .await
        .map_err(|_| ApiError(Problem::new(503, "the agent is shutting down")))??;
    let first = first.map_err(|oldest| {
        ApiError(Problem::new(
            410,
            format!("events before revision {oldest} were compacted; list the objects and watch from the list's revision"),
        ))
    })?;

    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut shutdown = state.shutdown.clone();
    let store = state.store.clone();
    tokio::spawn(async move {
        let mut last = since;
        let mut page = first;
        loop {
            let full = page.len() == PAGE;
            for ev in &page {
                last = ev.revision;
                if filter.matches(ev) && tx.send(line(ev)).await.is_err() {
                    return;
                }
            }
            if !full {
                break;
            }
            let s = store.clone();
            let from = last;
            page = match store.offload(move || s.events_since(from, PAGE)).await {
                Ok(Ok(Ok(p))) => p,
                _ => return,
            };
        }
        if !follow {
            return;
        }
        let mut live = live;
        loop {
            tokio::select! {
                ev = live.recv() => match ev {
                    Ok(ev) if ev.revision <= last => {}
                    Ok(ev) => {
                        last = ev.revision;
                        if filter.matches(&ev) && tx.send(line(&ev)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::info!(skipped = n, last, "watcher fell behind; closing its stream so it resumes");
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = shutdown.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    Ok(ndjson(rx, state.store.revision()))
}

/// A streaming NDJSON response fed by `rx`.
pub fn ndjson(mut rx: mpsc::Receiver<Bytes>, revision: u64) -> Response {
    let body = stream::poll_fn(move |cx| rx.poll_recv(cx).map(|o| o.map(Ok::<_, Infallible>)));
    let mut resp = (StatusCode::OK, Body::from_stream(body)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp.headers_mut()
        .insert("x-revision", HeaderValue::from(revision));
    resp
}
