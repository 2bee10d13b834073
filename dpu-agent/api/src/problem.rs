//! RFC 9457 problem details, the body of every error response.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::validate::FieldError;

/// `application/problem+json`.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// An error response. `field` names the offending input on a 422.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Problem {
    pub fn new(status: u16, detail: impl Into<String>) -> Self {
        Problem {
            type_: format!("urn:dpu:problem:{}", slug(status)),
            title: title(status).to_string(),
            status,
            detail: detail.into(),
            field: None,
        }
    }

    pub fn invalid(err: FieldError) -> Self {
        Problem {
            field: Some(err.field.clone()),
            ..Problem::new(422, err.to_string())
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl From<FieldError> for Problem {
    fn from(err: FieldError) -> Self {
        Problem::invalid(err)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.title, self.detail)?;
        if let Some(field) = &self.field {
            write!(f, " (field {field})")?;
        }
        Ok(())
    }
}

fn title(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

fn slug(status: u16) -> &'static str {
    match status {
        400 => "bad-request",
        401 => "unauthenticated",
        403 => "forbidden",
        404 => "not-found",
        405 => "method-not-allowed",
        409 => "conflict",
        410 => "gone",
        412 => "precondition-failed",
        413 => "too-large",
        415 => "unsupported-media-type",
        422 => "invalid",
        429 => "too-many-requests",
        503 => "unavailable",
        _ => "internal",
    }
}
