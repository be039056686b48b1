//! Responses Tollgate writes itself: JSON errors and redirects.
//!
//! Bodies are the shape the seed clients already parse: `{"code":404,"message":"..."}`. The
//! message is short and fixed per outcome; internal detail goes to the error log with the
//! request id, never to the client.

use super::forwarding::RequestId;
use super::names;
use bytes::Bytes;
use http::HeaderValue;
use pingora::http::{ResponseHeader, StaticHeaderName};
use pingora::proxy::Session;
use pingora::Result;

/// The JSON body for an error response.
pub fn error_body(code: u16, message: &str) -> Bytes {
    let body = serde_json::json!({ "code": code, "message": message });
    Bytes::from(body.to_string())
}

/// The client-facing message for a status Tollgate decided on.
pub fn default_message(code: u16) -> &'static str {
    match code {
        400 => "bad request",
        401 => "unauthorized",
        404 => "no route",
        408 => "request timeout",
        429 => "rate limit exceeded",
        502 => "bad gateway",
        503 => "no available backend",
        504 => "gateway timeout",
        _ => "error",
    }
}

/// Builds the response header of a JSON error.
pub fn error_header(code: u16, len: usize, request_id: &RequestId) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(code, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, len.to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if !request_id.as_str().is_empty() {
        resp.insert_header(&names::X_REQUEST_ID, request_id.header())?;
    }
    Ok(resp)
}

/// Writes a complete JSON error response.
pub async fn write_error(
    session: &mut Session,
    code: u16,
    message: &str,
    request_id: &RequestId,
) -> Result<()> {
    write_error_with(session, code, message, request_id, Vec::new()).await
}

/// Writes a complete JSON error response with extra headers (`Retry-After`, `RateLimit`...).
pub async fn write_error_with(
    session: &mut Session,
    code: u16,
    message: &str,
    request_id: &RequestId,
    extra: Vec<(&StaticHeaderName, HeaderValue)>,
) -> Result<()> {
    let body = error_body(code, message);
    let mut resp = error_header(code, body.len(), request_id)?;
    for (name, value) in extra {
        resp.insert_header(name, value)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}
