//! What can go wrong talking to the agent. Messages never repeat their
//! source (print the chain once, at the edge) and never contain key material.

use std::path::PathBuf;

use crate::problem::Problem;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The agent answered with `application/problem+json`.
    #[error("{0}")]
    Problem(Problem),
    /// Any other non-2xx answer; `body` is cut to a few KiB.
    #[error("HTTP {status}: {body}")]
    Http { status: u16, body: String },
    /// Connecting, the TLS handshake, sending or receiving failed.
    #[error("{method} {url} failed")]
    Transport {
        method: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// A 2xx answer whose body or headers are not what the contract says.
    #[error("unexpected response to {what}")]
    Decode {
        what: String,
        #[source]
        source: BoxError,
    },
    /// A CA, certificate or key file could not be read.
    #[error("cannot read {}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A CA, certificate or key is not usable PEM. `source` names the file
    /// (or `<ca PEM>`, `<client certificate PEM>`, `<client key PEM>` when
    /// given in memory); `reason` never quotes the content.
    #[error("{source_name}: {reason}")]
    Pem { source_name: String, reason: String },
    /// rustls refused the configuration (e.g. the key does not fit the
    /// certificate).
    #[error("invalid TLS client configuration")]
    Tls(#[source] rustls::Error),
    /// The server URL or a client setting is unusable.
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// The HTTP status of an error answer (`Problem` or `Http`).
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Problem(p) => Some(p.status),
            ClientError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The offending field of a 422.
    pub fn field(&self) -> Option<&str> {
        match self {
            ClientError::Problem(p) => p.field.as_deref(),
            _ => None,
        }
    }

    /// The problem document, when the agent sent one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ClientError::Problem(p) => Some(p),
            _ => None,
        }
    }

    pub(crate) fn decode(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        ClientError::Decode {
            what: what.into(),
            source: source.into(),
        }
    }
}
