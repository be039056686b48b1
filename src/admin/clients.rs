//! `/clients` endpoints of the admin API: create, read, list, update, rotate and delete API
//! clients. The shapes match what users of the Go gateways Tollgate replaces already script
//! against (`POST /clients`, `PATCH /clients` with `client_id` in the body, ...).
//!
//! - `POST   /clients`                       create; 201 + view with the plaintext key (once)
//! - `GET    /clients?offset=0&limit=50`     page of clients ordered by id, plus the total
//! - `PATCH  /clients`                       update, `client_id` in the body
//! - `GET    /clients/{id}`                  one client, key masked, live bucket level
//! - `PATCH  /clients/{id}`                  update
//! - `DELETE /clients/{id}`                  204
//! - `POST   /clients/{id}/rotate-key`       new key; 200 + view with the plaintext key (once)
//!
//! Errors are `{"code":N,"message":"..."}`: 400 bad input, 404 unknown client or path, 405
//! wrong method on a known path (with `Allow`), 409 duplicate id, 413 body over 64 KiB,
//! 503 store unavailable. Bodies are parsed as JSON whatever the `Content-Type` says.

use super::http_util::{error, json, read_body};
use crate::clients::{Clients, NewClient, Patch, RegistryError};
use http::{header, HeaderValue, Method, Response, StatusCode};
use pingora::protocols::http::ServerSession;
use serde_json::{json, Map, Value};

/// Page size when `limit` is absent.
const DEFAULT_LIMIT: usize = 50;
/// Largest accepted `limit`. Larger values are refused rather than silently clamped, so a
/// script paging with its own `offset += limit` cannot skip clients.
const MAX_LIMIT: usize = 500;
/// Longest client id (the registry's rule, repeated so a path can be judged without it).
const MAX_ID_LEN: usize = 64;

/// What a path under `/clients` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target<'a> {
    /// `/clients`
    Collection,
    /// `/clients/{id}`
    Client(&'a str),
    /// `/clients/{id}/rotate-key`
    RotateKey(&'a str),
}

impl Target<'_> {
    fn allowed(self) -> &'static str {
        match self {
            Target::Collection => "GET, POST, PATCH",
            Target::Client(_) => "GET, PATCH, DELETE",
            Target::RotateKey(_) => "POST",
        }
    }
}

/// Whether `id` can be a client id: 1 to 64 of `[A-Za-z0-9._-]`.
fn is_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses a path; `None` is a 404 (including ids that could never exist).
fn target(path: &str) -> Option<Target<'_>> {
    let rest = path.strip_prefix("/clients")?;
    if rest.is_empty() {
        return Some(Target::Collection);
    }
    let rest = rest.strip_prefix('/')?;
    let (id, tail) = match rest.split_once('/') {
        Some((id, tail)) => (id, Some(tail)),
        None => (rest, None),
    };
    if !is_client_id(id) {
        return None;
    }
    match tail {
        None => Some(Target::Client(id)),
        Some("rotate-key") => Some(Target::RotateKey(id)),
        Some(_) => None,
    }
}

/// Handles a request under `/clients` (the caller has checked the admin token).
pub async fn handle(
    registry: &Clients,
    session: &mut ServerSession,
    method: &Method,
    path: &str,
) -> Response<Vec<u8>> {
    let Some(target) = target(path) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    let result: Handled = match (target, method) {
        (Target::Collection, &Method::GET) => {
            let query = session.req_header().uri.query().unwrap_or("").to_owned();
            list(registry, &query)
        }
        (Target::Collection, &Method::POST) => create(registry, session).await,
        (Target::Collection, &Method::PATCH) => patch(registry, session, None).await,
        (Target::Client(id), &Method::GET) => registry
            .get(id)
            .map(|view| json(StatusCode::OK, &view))
            .map_err(registry_error),
        (Target::Client(id), &Method::PATCH) => patch(registry, session, Some(id)).await,
        (Target::Client(id), &Method::DELETE) => registry
            .delete(id)
            .await
            .map(|()| no_content())
            .map_err(registry_error),
        (Target::RotateKey(id), &Method::POST) => registry
            .rotate_key(id)
            .await
            .map(|(view, _key)| json(StatusCode::OK, &view))
            .map_err(registry_error),
        _ => Err(method_not_allowed(target.allowed())),
    };
    result.unwrap_or_else(|response| *response)
}

/// An error response, boxed so the `Result`s carrying it stay small.
type Rejection = Box<Response<Vec<u8>>>;
type Handled = Result<Response<Vec<u8>>, Rejection>;

/// `GET /clients?offset=&limit=`
fn list(registry: &Clients, query: &str) -> Handled {
    let mut offset = 0usize;
    let mut limit = DEFAULT_LIMIT;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match name {
            "offset" => &mut offset,
            "limit" => &mut limit,
            _ => continue,
        };
        *slot = value.parse().map_err(|_| {
            bad_request(&format!(
                "{name} must be a non-negative integer, got {value:?}"
            ))
        })?;
    }
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(bad_request(&format!(
            "limit must be 1 to {MAX_LIMIT}, got {limit}"
        )));
    }
    let (clients, total) = registry.list(offset, limit);
    Ok(json(
        StatusCode::OK,
        &json!({ "clients": clients, "total": total, "offset": offset, "limit": limit }),
    ))
}

/// `POST /clients`
async fn create(registry: &Clients, session: &mut ServerSession) -> Handled {
    let body = read_body(session).await.map_err(Box::new)?;
    let new: NewClient = serde_json::from_slice(&body).map_err(|e| bad_json(&e))?;
    let (view, _key) = registry.create(new).await.map_err(registry_error)?;
    let mut response = json(StatusCode::CREATED, &view);
    if let Ok(location) = HeaderValue::from_str(&format!("/clients/{}", view.client_id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `PATCH /clients` (`path_id` is `None`, the id is in the body) and `PATCH /clients/{id}`.
async fn patch(registry: &Clients, session: &mut ServerSession, path_id: Option<&str>) -> Handled {
    let body = read_body(session).await.map_err(Box::new)?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| bad_json(&e))?;
    let Value::Object(mut fields) = value else {
        return Err(bad_request("request body must be a JSON object"));
    };
    let body_id = take_client_id(&mut fields)?;
    let id = match (path_id, body_id) {
        (Some(path_id), Some(body_id)) if body_id != path_id => {
            return Err(bad_request(&format!(
                "client_id {body_id:?} in the body does not match {path_id:?} in the path"
            )));
        }
        (Some(path_id), _) => path_id.to_owned(),
        (None, Some(body_id)) => body_id,
        (None, None) => return Err(bad_request("missing field `client_id`")),
    };
    let patch: Patch = serde_json::from_value(Value::Object(fields)).map_err(|e| bad_json(&e))?;
    let view = registry.update(&id, patch).await.map_err(registry_error)?;
    Ok(json(StatusCode::OK, &view))
}

/// Removes `client_id` from a PATCH body; it must be a valid id string when present.
fn take_client_id(fields: &mut Map<String, Value>) -> Result<Option<String>, Rejection> {
    match fields.remove("client_id") {
        None => Ok(None),
        Some(Value::String(id)) if is_client_id(&id) => Ok(Some(id)),
        Some(Value::String(id)) => Err(bad_request(&format!(
            "client_id must be 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 . _ -, got {id:?}"
        ))),
        Some(other) => Err(bad_request(&format!(
            "client_id must be a string, got {other}"
        ))),
    }
}

fn bad_request(message: &str) -> Rejection {
    Box::new(error(StatusCode::BAD_REQUEST, message))
}

fn bad_json(e: &serde_json::Error) -> Rejection {
    bad_request(&format!("invalid request body: {e}"))
}

fn registry_error(e: RegistryError) -> Rejection {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let response = match e {
        // The exact body the seed API's scripts check for.
        RegistryError::NotFound(_) => error(status, "not found"),
        RegistryError::Invalid(msg) => error(status, &msg),
        RegistryError::Unavailable(_) => {
            log::warn!("admin: {e}");
            error(status, &e.to_string())
        }
        RegistryError::Internal(_) => {
            log::error!("admin: {e}");
            error(status, &e.to_string())
        }
        RegistryError::Conflict(_) => error(status, &e.to_string()),
    };
    Box::new(response)
}

fn method_not_allowed(allow: &'static str) -> Rejection {
    let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    Box::new(response)
}

/// 204 with no body and no `Content-Length` (RFC 9110 §8.6 forbids one on 204).
fn no_content() -> Response<Vec<u8>> {
    let mut response = Response::new(Vec::new());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves which paths name the collection, a client or its rotate-key action, and that
    /// anything else (bad ids, extra segments, look-alike prefixes) is a 404.
    #[test]
    fn paths_map_to_targets_or_not_found() {
        assert_eq!(target("/clients"), Some(Target::Collection));
        assert_eq!(
            target("/clients/client_1"),
            Some(Target::Client("client_1"))
        );
        assert_eq!(target("/clients/a.b-C_9"), Some(Target::Client("a.b-C_9")));
        assert_eq!(
            target("/clients/client_1/rotate-key"),
            Some(Target::RotateKey("client_1"))
        );
        let long = format!("/clients/{}", "a".repeat(64));
        assert!(target(&long).is_some());
        let too_long = format!("/clients/{}", "a".repeat(65));
        for bad in [
            "/clientsx",
            "/clients/",
            "/clients/a/b/c",
            "/clients/a/rotate-key/",
            "/clients/a/rotate",
            "/clients/a%20b",
            "/clients//rotate-key",
            too_long.as_str(),
        ] {
            assert_eq!(target(bad), None, "{bad}");
        }
    }
}
