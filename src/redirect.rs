//! The plaintext listener's redirect: every request gets a 308 to the same URL over https.
//!
//! 308 (not 301) so clients keep the method and body.

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

pub struct Redirect {
    https_port: u16,
}

impl Redirect {
    pub fn new(https_port: u16) -> Self {
        Redirect { https_port }
    }

    /// The https URL for a request's host and target; `None` without a usable host.
    pub fn location(&self, host: &str, path_and_query: &str) -> Option<String> {
        let bare = strip_port(host)?;
        let port = match self.https_port {
            443 => String::new(),
            p => format!(":{p}"),
        };
        Some(format!("https://{bare}{port}{path_and_query}"))
    }
}

/// The host without its port; `None` if it is empty or has characters a host can't have.
fn strip_port(host: &str) -> Option<&str> {
    let bare = if host.starts_with('[') {
        let end = host.find(']')?;
        &host[..=end]
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let valid = !bare.is_empty()
        && bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
    valid.then_some(bare)
}

#[async_trait]
impl ServeHttp for Redirect {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let req = session.req_header();
        let http10_close = req.version == http::Version::HTTP_10
            && !req
                .headers
                .get(http::header::CONNECTION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("keep-alive"));
        if http10_close {
            // Pingora's HttpServer keeps connections alive unless told otherwise.
            session.set_keepalive(None);
        }
        let req = session.req_header();
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let built = match self.location(host, target) {
            Some(location) => http::Response::builder()
                .status(308)
                .header(http::header::LOCATION, location)
                .header(http::header::CONTENT_LENGTH, 0)
                .body(Vec::new()),
            None => {
                let body = br#"{"code":400,"message":"missing host"}"#.to_vec();
                http::Response::builder()
                    .status(400)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header(http::header::CONTENT_LENGTH, body.len())
                    .body(body)
            }
        };
        built.unwrap_or_else(|_| http::Response::new(Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The redirect keeps host and target, swaps the port, and omits :443.
    #[test]
    fn location_keeps_host_and_target() {
        let r = Redirect::new(8443);
        assert_eq!(
            r.location("example.com:8080", "/a?b=1").as_deref(),
            Some("https://example.com:8443/a?b=1")
        );
        assert_eq!(
            Redirect::new(443).location("[::1]:80", "/").as_deref(),
            Some("https://[::1]/")
        );
        assert_eq!(r.location("", "/"), None);
        assert_eq!(r.location("evil.com/x", "/"), None);
    }
}
