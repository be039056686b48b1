//! From the file's shape to a validated [`Config`], collecting every error with its YAML path.

pub(super) use super::file::*;
pub(super) use super::*;
use serde::de::DeserializeOwned;
pub(super) use std::collections::{HashMap, HashSet};
pub(super) use std::net::IpAddr;

pub(super) const DEFAULT_PID_FILE: &str = "/tmp/tollgate.pid";
pub(super) const DEFAULT_UPGRADE_SOCK: &str = "/tmp/tollgate_upgrade.sock";

/// Collects errors while walking the file.
#[derive(Default)]
pub(super) struct Errors(Vec<FieldError>);

impl Errors {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Deserializes one node; a type error is recorded with its full path and yields `None`.
    pub(super) fn parse<T: DeserializeOwned>(
        &mut self,
        path: &str,
        value: serde_yaml::Value,
    ) -> Option<T> {
        match serde_path_to_error::deserialize(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let full = match inner.as_str() {
                    "." => path.to_string(),
                    p if path == "(root)" => p.to_string(),
                    p if p.starts_with('[') => format!("{path}{p}"),
                    p => format!("{path}.{p}"),
                };
                self.push(full, e.into_inner().to_string());
                None
            }
        }
    }

    pub(super) fn positive(
        &mut self,
        path: &str,
        d: Option<HumanDuration>,
        default: Duration,
    ) -> Duration {
        match d {
            Some(HumanDuration(d)) if d.is_zero() => {
                self.push(path, "must be greater than zero");
                default
            }
            Some(HumanDuration(d)) => d,
            None => default,
        }
    }
}

mod routes;
mod sections;
mod upstreams;

use routes::*;
use sections::*;
use upstreams::*;

pub(super) fn from_yaml(text: &str) -> Result<Config, Vec<FieldError>> {
    let mut errs = Errors::default();
    let root: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let at = e
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "(document)".into());
            return Err(vec![FieldError {
                path: at,
                message: format!("invalid YAML: {e}"),
            }]);
        }
    };
    let Some(top) = errs.parse::<TopFile>("(root)", root) else {
        return Err(errs.0);
    };

    let server = server(&mut errs, top.server);
    let listeners = listeners(&mut errs, top.listeners);
    let logging = logging(&mut errs, top.logging);
    let admin = top.admin.and_then(|v| admin(&mut errs, v));
    let metrics = top.metrics.and_then(|v| metrics(&mut errs, v));
    let trusted_proxies = trusted_proxies(&mut errs, top.trusted_proxies);
    let clients = top.clients.and_then(|v| clients(&mut errs, v));
    // Routes are checked against every declared group, valid or not, so one broken group does
    // not also report each route that uses it.
    let declared: HashSet<String> = top.upstreams.keys().cloned().collect();
    let upstreams = upstreams(&mut errs, top.upstreams);
    let routes = routes(&mut errs, top.routes, &declared, clients.is_some());

    if errs.0.is_empty() {
        Ok(Config {
            server,
            listeners,
            logging,
            admin,
            metrics,
            trusted_proxies,
            clients,
            upstreams,
            routes,
            source: Arc::new(Source::new(text)),
        })
    } else {
        Err(errs.0)
    }
}

pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

pub(super) fn socket_addr(
    errs: &mut Errors,
    path: &str,
    raw: Option<String>,
    default: &str,
) -> Option<SocketAddr> {
    let raw = raw.unwrap_or_else(|| default.to_string());
    match raw.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(
                path,
                format!("invalid socket address {raw:?} (expected ip:port)"),
            );
            None
        }
    }
}

pub(super) fn statuses(
    errs: &mut Errors,
    path: &str,
    list: Option<Vec<u16>>,
    default: &[u16],
) -> Vec<u16> {
    let list = list.unwrap_or_else(|| default.to_vec());
    for (i, s) in list.iter().enumerate() {
        if !(100..=599).contains(s) {
            errs.push(
                format!("{path}[{i}]"),
                format!("{s} is not an HTTP status code"),
            );
        }
    }
    list
}
