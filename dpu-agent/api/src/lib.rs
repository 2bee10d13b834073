//! The v1 management API of the DPU agent, shared by the agent, `dpuctl`, the
//! host stub and the end-to-end tests: the object model ([`object`], [`spec`],
//! [`kind`]), validation as pure functions ([`validate`]), RFC 9457 errors
//! ([`problem`]), roles from SPIFFE IDs ([`identity`]) and an async client
//! with mutual TLS ([`client`]). See README.md.

#[cfg(feature = "client")]
pub mod client;
pub mod identity;
pub mod kind;
pub mod limits;
pub mod object;
pub mod problem;
pub mod report;
pub mod spec;
pub mod types;
pub mod validate;

pub use kind::Kind;
pub use object::{Condition, ConditionStatus, Event, EventType, Object, ObjectKey, Phase, Status};
pub use problem::Problem;
pub use spec::Spec;
pub use validate::FieldError;

/// `error: cause: cause` from an error and its sources, on one line: the
/// project's one error-chain printer, used wherever an error leaves a
/// program (the agent's logs, problem responses and status messages,
/// dpuctl's and the host stub's output, the tests). Library crates return
/// typed errors with `#[source]` and do not print chains.
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
