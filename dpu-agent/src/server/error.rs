//! Errors as HTTP responses: one function maps every error the handlers can
//! meet to a problem+json response, and logs server-side failures once.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dpu_api::Problem;
use dpu_api::problem::CONTENT_TYPE;

use crate::store::StoreError;

/// A handler's error: a problem to send.
#[derive(Debug)]
pub struct ApiError(pub Problem);

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        ApiError(p)
    }
}

impl From<dpu_api::FieldError> for ApiError {
    fn from(e: dpu_api::FieldError) -> Self {
        ApiError(Problem::invalid(e))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError(store_problem(&e))
    }
}

/// A store failure is the server's fault: log the whole chain, tell the
/// client only that the write was not accepted.
pub fn store_problem(e: &StoreError) -> Problem {
    tracing::error!(error = %error_chain(e), "store operation failed");
    Problem::new(
        500,
        "the agent could not read or write its store; nothing was changed",
    )
}

/// The agent's one printer ([`crate::error_chain`]), re-exported where the
/// server and the store have always called it.
pub use crate::error_chain;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        problem_response(&self.0)
    }
}

pub fn problem_response(p: &Problem) -> Response {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(p).unwrap_or_default();
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_keep_status_and_type() {
        let resp = problem_response(&Problem::new(412, "stale"));
        assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let resp = ApiError::from(dpu_api::FieldError::new("spec.vni", "bad")).into_response();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let resp = ApiError::from(StoreError::Poisoned).into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
