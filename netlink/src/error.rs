//! The errors of the netlink layer.

use std::io;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// socket(2), bind(2) and the like failed.
    #[error("cannot open the netlink socket")]
    Open(#[source] io::Error),
    /// The network namespace to open the socket in could not be entered.
    #[error("cannot enter network namespace {path}")]
    Netns {
        path: String,
        #[source]
        source: io::Error,
    },
    /// Sending or receiving failed.
    #[error("netlink I/O failed")]
    Io(#[source] io::Error),
    /// The kernel answered with a negative errno in `NLMSG_ERROR` (or in
    /// the `NLMSG_DONE` of a dump).
    #[error("the kernel refused the request")]
    Kernel(#[source] io::Error),
    /// A refusal with the kernel's extended-ack reason (the driver's words,
    /// e.g. "Port doesn't support function attributes").
    #[error("the kernel refused the request: {message}")]
    Refused {
        #[source]
        source: io::Error,
        message: String,
    },
    /// The answer is not well-formed netlink.
    #[error("malformed netlink reply: {0}")]
    Malformed(String),
    /// No complete answer within the socket's timeout.
    #[error("no complete answer from the kernel within {0:?}")]
    Timeout(Duration),
}

impl Error {
    /// The errno of a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel(e) | Error::Refused { source: e, .. } => e.raw_os_error(),
            _ => None,
        }
    }

    /// A kernel refusal with errno `errno` (positive).
    pub fn kernel(errno: i32) -> Error {
        Error::Kernel(io::Error::from_raw_os_error(errno))
    }
}

/// For callers that report `io::Error`: a kernel refusal keeps its errno,
/// a malformed reply is `InvalidData`, a timeout `TimedOut`.
impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e {
            Error::Open(e) | Error::Io(e) | Error::Kernel(e) => e,
            Error::Refused { source, message } => {
                io::Error::new(source.kind(), format!("{source}: {message}"))
            }
            Error::Netns { path, source } => io::Error::new(
                source.kind(),
                format!("cannot enter network namespace {path}: {source}"),
            ),
            Error::Malformed(what) => io::Error::new(io::ErrorKind::InvalidData, what),
            e @ Error::Timeout(_) => io::Error::new(io::ErrorKind::TimedOut, e.to_string()),
        }
    }
}
