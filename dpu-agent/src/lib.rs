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
pub mod threads;
pub mod time;

/// The project's one error-chain printer (`error: cause: cause`).
pub use dpu_api::error_chain;

/// Helpers shared by the unit tests of several modules.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::HashMap;

    /// An environment lookup (as [`crate::config::Config::resolve`] and
    /// [`crate::sd_notify::Notifier::from_env`] take) in which only `pairs`
    /// are set, so tests need not touch the process's environment.
    pub(crate) fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }
}
