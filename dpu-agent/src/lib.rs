//! The DPU agent: the embedded store, the v1 API server with mutual TLS, the
//! reconcile engine and its controllers, and (feature `dev`, on by default)
//! the dev-mode bootstrap. The binaries in `src/bin` are thin wrappers over
//! this library. See README.md.

pub mod admission;
pub mod agent;
pub mod config;
#[cfg(feature = "dev")]
pub mod dev;
pub mod metrics;
pub mod reconcile;
pub mod sd_notify;
pub mod server;
pub mod store;
pub mod time;

/// `error: cause: cause` from an error and its sources, on one line: the
/// agent's one error-chain printer, used wherever an error leaves the agent
/// (logs, problem responses, status condition messages). Library crates
/// return typed errors with `#[source]` and do not print chains.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
