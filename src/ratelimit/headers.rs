//! `RateLimit-Policy`, `RateLimit` and `Retry-After` field values
//! (draft-ietf-httpapi-ratelimit-headers-08+, structured-field lists).
//!
//! Writers append one list member to a caller-owned `String`, prefixing `", "` when it is not
//! empty, so a route with several policies builds each header in a single buffer and nothing
//! else is allocated.

use super::Decision;
use std::time::Duration;

/// Whether `name` can be a policy identifier: a non-empty sf-string, i.e. printable ASCII
/// (`"` and `\` are allowed and escaped on output).
#[must_use]
pub fn is_valid_policy_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// Appends `name` as an sf-string. Bytes an sf-string cannot carry are skipped, which only
/// happens for names that [`is_valid_policy_name`] rejects.
pub(crate) fn push_sf_string(out: &mut String, name: &str) {
    out.push('"');
    for c in name.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => {}
        }
    }
    out.push('"');
}

fn push_separator(out: &mut String) {
    if !out.is_empty() {
        out.push_str(", ");
    }
}

/// Whole seconds, rounded up: a client told to wait less than the truth would be denied.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// Appends a `RateLimit-Policy` member: `"<name>";q=<quota>;w=<window secs>`.
pub fn write_policy_item(out: &mut String, name: &str, quota: u64, window_secs: u64) {
    push_separator(out);
    push_sf_string(out, name);
    push_policy_params(out, quota, window_secs);
}

pub(crate) fn push_policy_params(out: &mut String, quota: u64, window_secs: u64) {
    push_params(out, ";q=", quota, ";w=", window_secs);
}

/// Appends a `RateLimit` member: `"<name>";r=<remaining>;t=<reset secs, rounded up>`.
pub fn write_ratelimit_item(out: &mut String, name: &str, decision: &Decision) {
    push_separator(out);
    push_sf_string(out, name);
    push_ratelimit_params(out, decision);
}

pub(crate) fn push_ratelimit_params(out: &mut String, decision: &Decision) {
    push_params(
        out,
        ";r=",
        decision.remaining,
        ";t=",
        ceil_secs(decision.reset),
    );
}

/// Two integer parameters, formatted without `fmt` (on every response, so it shows).
fn push_params(out: &mut String, first: &str, a: u64, second: &str, b: u64) {
    let mut n = itoa::Buffer::new();
    out.push_str(first);
    out.push_str(n.format(a));
    out.push_str(second);
    out.push_str(n.format(b));
}

/// Appends an already-quoted member name (precomputed by `Limiter`) and a separator.
pub(crate) fn push_quoted(out: &mut String, quoted: &str) {
    push_separator(out);
    out.push_str(quoted);
}
