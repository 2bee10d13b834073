//! Request bodies and JSON responses: a body extractor that answers 413 past
//! the size limit, JSON parsing that names the offending field (422) or the
//! syntax error (400), and responses that carry `X-Revision`.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dpu_api::Problem;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::MAX_BODY;
use super::error::ApiError;

/// The raw request body, at most [`MAX_BODY`] bytes.
#[derive(Debug)]
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Body(bytes)),
            Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError(Problem::new(
                    413,
                    format!("the request body is larger than {MAX_BODY} bytes"),
                )))
            }
            Err(rej) => Err(ApiError(Problem::new(400, rej.body_text()))),
        }
    }
}

/// Query parameters, decoded strictly: an unknown parameter or a value of
/// the wrong type is a 400 problem naming it, the same on every endpoint.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(q)| QueryParams(q))
            .map_err(|rej| {
                ApiError(Problem::new(
                    400,
                    format!("bad query string: {}", rej.body_text()),
                ))
            })
    }
}

/// A query parameter that names an object, tenant or host: a DNS label when
/// present (an empty `?tenant=` is refused, not read as "every tenant").
pub fn label_param(field: &str, value: &Option<String>) -> Result<(), ApiError> {
    if let Some(v) = value {
        dpu_api::validate::check_label(field, v)?;
    }
    Ok(())
}

/// Parses a JSON body: unknown or mistyped fields are 422 naming the field,
/// malformed JSON is 400.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let msg = inner.to_string();
                let field = match missing_field(&msg) {
                    Some(name) if path == "." => name.to_string(),
                    Some(name) => format!("{path}.{name}"),
                    None => path,
                };
                ApiError(Problem::new(422, msg).with_field(field))
            }
            _ => ApiError(Problem::new(
                400,
                format!("the body is not valid JSON: {inner}"),
            )),
        }
    })
}

fn missing_field(msg: &str) -> Option<&str> {
    msg.strip_prefix("missing field `")?.split('`').next()
}

/// A JSON response with the store revision in `X-Revision`.
pub fn json_with_revision<T: Serialize>(status: StatusCode, value: &T, revision: u64) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = (status, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-revision", HeaderValue::from(revision));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpu_api::object::PutBody;

    #[test]
    fn unknown_fields_are_422_with_the_field() {
        let err = parse_json::<PutBody>(br#"{"spec": {}, "colour": 1}"#).unwrap_err();
        assert_eq!(err.0.status, 422);
        assert_eq!(err.0.field.as_deref(), Some("colour"));
        let err = parse_json::<PutBody>(br#"{"tenant": "a"}"#).unwrap_err();
        assert_eq!(err.0.field.as_deref(), Some("spec"));
        let err = parse_json::<PutBody>(br#"{"spec": "#).unwrap_err();
        assert_eq!(err.0.status, 400);
    }
}
