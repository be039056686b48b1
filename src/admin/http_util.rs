//! Small HTTP helpers for the admin API: JSON responses, body reading, redaction.

use http::{Response, StatusCode};
use pingora::protocols::http::ServerSession;
use serde::Serialize;
use serde_json::Value;

/// Largest admin request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// A JSON response.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response<Vec<u8>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, bytes.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(bytes)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

/// `{"code":..,"message":..}` with the status.
pub fn error(status: StatusCode, message: &str) -> Response<Vec<u8>> {
    json(
        status,
        &serde_json::json!({ "code": status.as_u16(), "message": message }),
    )
}

/// Reads the whole request body, refusing more than [`MAX_BODY`] bytes.
pub async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Response<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request body too large",
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                log::debug!("admin: cannot read request body: {e}");
                return Err(error(StatusCode::BAD_REQUEST, "cannot read request body"));
            }
        }
    }
}

/// Compares secrets without an early exit that would leak how much of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Hides secrets in a config tree: keys named like secrets, and passwords inside URLs.
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.to_ascii_lowercase();
                if ["token", "password", "secret", "api_key"]
                    .iter()
                    .any(|s| key.contains(s) && !key.ends_with("_env"))
                {
                    *v = Value::String("<redacted>".into());
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(s) => {
            if let Some(clean) = redact_url_password(s) {
                *s = clean;
            }
        }
        _ => {}
    }
}

/// `postgres://user:secret@host/db` -> `postgres://user:<redacted>@host/db`.
fn redact_url_password(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let (userinfo, host) = rest.split_once('@')?;
    let (user, _password) = userinfo.split_once(':')?;
    Some(format!("{scheme}://{user}:<redacted>@{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passwords in URLs and secret-named keys are hidden; env var names are not.
    #[test]
    fn redacts_secrets_but_not_env_names() {
        let mut v = serde_json::json!({
            "clients": {"store": "postgres://u:hunter2@db/x"},
            "admin": {"token_env": "TOKEN", "token": "abc"}
        });
        redact(&mut v);
        assert_eq!(v["clients"]["store"], "postgres://u:<redacted>@db/x");
        assert_eq!(v["admin"]["token_env"], "TOKEN");
        assert_eq!(v["admin"]["token"], "<redacted>");
    }

    /// Equal secrets compare equal; any difference or length mismatch does not.
    #[test]
    fn constant_time_eq_compares_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
