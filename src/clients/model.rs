//! Client records: the stored row, the admin API's input shapes and its JSON view,
//! plus the validation rules every path shares.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize};

use super::keys::KeyHash;

/// Longest accepted `client_id`.
pub const MAX_CLIENT_ID_LEN: usize = 64;

/// One client as the stores persist it. Keys appear only as hash and display prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredClient {
    /// 1..=64 characters of `[A-Za-z0-9._-]`.
    pub client_id: String,
    /// SHA-256 of the API key.
    pub key_hash: KeyHash,
    /// First characters of the API key, for the masked view.
    pub key_prefix: String,
    /// Refill rate in tokens per second; finite and > 0.
    pub rate_per_sec: f64,
    /// Bucket size (the burst); ≥ 1.
    pub capacity: u32,
    /// Disabled clients are refused with [`super::AuthError::Disabled`].
    pub enabled: bool,
    /// After this instant the key is refused with [`super::AuthError::Expired`].
    pub expires_at: Option<SystemTime>,
    /// When the client was created; also tells a re-created client from the old one.
    pub created_at: SystemTime,
    /// Bucket level at the last save.
    pub tokens: f64,
    /// Bucket refill clock at the last save.
    pub last_refill: SystemTime,
}

/// One bucket level to persist, as produced by `Registry::save_states`.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedState {
    /// Which client the level belongs to.
    pub client_id: String,
    /// Tokens left in the bucket.
    pub tokens: f64,
    /// The bucket's refill clock.
    pub last_refill: SystemTime,
}

/// Input of `Registry::create`; deserializes from the admin API's POST body.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    /// Identifier chosen by the operator.
    pub client_id: String,
    /// Falls back to the configured default.
    #[serde(default)]
    pub rate_per_sec: Option<f64>,
    /// Falls back to the configured default.
    #[serde(default)]
    pub capacity: Option<u32>,
    /// Defaults to `true`.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// RFC 3339 in JSON; `None` never expires.
    #[serde(default, with = "rfc3339_opt")]
    pub expires_at: Option<SystemTime>,
}

fn default_enabled() -> bool {
    true
}

impl NewClient {
    /// A client with the given id and every other field at its default.
    pub fn new(client_id: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            rate_per_sec: None,
            capacity: None,
            enabled: true,
            expires_at: None,
        }
    }
}

/// Input of `Registry::update`; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patch {
    /// New refill rate.
    #[serde(default)]
    pub rate_per_sec: Option<f64>,
    /// New bucket size.
    #[serde(default)]
    pub capacity: Option<u32>,
    /// Enable or disable the client.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `Some(None)` (JSON `null`) clears the expiry; absent leaves it alone.
    #[serde(default, deserialize_with = "rfc3339_patch")]
    pub expires_at: Option<Option<SystemTime>>,
}

/// The JSON shape the admin API returns; existing scripts parse these exact field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientView {
    /// Client identifier.
    pub client_id: String,
    /// Plaintext key in create/rotate responses, the masked prefix everywhere else.
    pub api_key: String,
    /// Refill rate in tokens per second.
    pub rate_per_sec: f64,
    /// Bucket size.
    pub capacity: u32,
    /// Live bucket level.
    pub tokens: f64,
    /// Live bucket refill clock, RFC 3339.
    #[serde(with = "rfc3339")]
    pub last_refill: SystemTime,
    /// Whether the key is accepted.
    pub enabled: bool,
    /// Expiry, RFC 3339 or `null`.
    #[serde(with = "rfc3339_opt")]
    pub expires_at: Option<SystemTime>,
    /// Creation time, RFC 3339.
    #[serde(with = "rfc3339")]
    pub created_at: SystemTime,
}

/// Checks the `client_id` rules; the message is meant for the admin API caller.
pub fn validate_client_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_CLIENT_ID_LEN {
        return Err(format!(
            "client_id must be 1 to {MAX_CLIENT_ID_LEN} characters, got {}",
            id.len()
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "client_id may only contain A-Z a-z 0-9 . _ -, found {bad:?}"
        ));
    }
    Ok(())
}

/// Checks that a refill rate is usable by a token bucket.
pub fn validate_rate(rate_per_sec: f64) -> Result<(), String> {
    if rate_per_sec.is_finite() && rate_per_sec > 0.0 {
        Ok(())
    } else {
        Err(format!(
            "rate_per_sec must be a finite number above 0, got {rate_per_sec}"
        ))
    }
}

/// Checks that a bucket can hold at least one request.
pub fn validate_capacity(capacity: u32) -> Result<(), String> {
    if capacity >= 1 {
        Ok(())
    } else {
        Err("capacity must be at least 1".to_owned())
    }
}

/// Checks that an expiry is one RFC 3339 and both databases can represent
/// (years 1970 through 9999).
pub fn validate_expiry(expires_at: SystemTime) -> Result<(), String> {
    // 10000-01-01T00:00:00Z
    const YEAR_10000: Duration = Duration::from_secs(253_402_300_800);
    match expires_at.duration_since(UNIX_EPOCH) {
        Ok(since) if since < YEAR_10000 => Ok(()),
        _ => Err("expires_at must fall between 1970 and 9999".to_owned()),
    }
}

/// Drops sub-microsecond precision, the finest both stores keep, so a value read
/// back from the database compares equal to the one written.
pub fn truncate_to_micros(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::new(d.as_secs(), d.subsec_micros() * 1_000),
        Err(e) => {
            let d = e.duration();
            UNIX_EPOCH - Duration::new(d.as_secs(), d.subsec_micros() * 1_000)
        }
    }
}

/// Microseconds since the Unix epoch, saturating; the SQLite column encoding.
pub fn to_unix_micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |m| -m),
    }
}

/// Inverse of [`to_unix_micros`].
pub fn from_unix_micros(micros: i64) -> SystemTime {
    let magnitude = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

fn format_rfc3339(t: SystemTime) -> Result<String, String> {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("time not representable as rfc 3339: {e}"))
}

fn parse_rfc3339(s: &str) -> Result<SystemTime, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| format!("invalid rfc 3339 timestamp {s:?}: {e}"))
}

/// Serde adapter: `SystemTime` as an RFC 3339 string in UTC.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the time as RFC 3339.
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let text = super::format_rfc3339(*t).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    /// Reads an RFC 3339 string with any offset.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde adapter: `Option<SystemTime>` as an RFC 3339 string or `null`.
pub mod rfc3339_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the time as RFC 3339, or `null`.
    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    /// Reads an RFC 3339 string or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => super::parse_rfc3339(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// Tells a JSON `null` (clear the expiry) from an absent field (keep it): serde only
/// calls this when the field is present, and `#[serde(default)]` covers absence.
fn rfc3339_patch<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<SystemTime>>, D::Error> {
    rfc3339_opt::deserialize(d).map(Some)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Proves the id rules: length bounds and the allowed character set.
    #[test]
    fn client_id_rules_reject_bad_ids() {
        assert!(validate_client_id("client_1.prod-eu").is_ok());
        assert!(validate_client_id(&"a".repeat(64)).is_ok());
        assert!(validate_client_id("").is_err());
        assert!(validate_client_id(&"a".repeat(65)).is_err());
        assert!(validate_client_id("has space").is_err());
        assert!(validate_client_id("slash/").is_err());
        assert!(validate_client_id("ümlaut").is_err());
    }

    /// Proves rates must be finite and positive and capacity at least one.
    #[test]
    fn rate_and_capacity_rules_reject_unusable_buckets() {
        assert!(validate_rate(0.5).is_ok());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(validate_rate(bad).is_err(), "{bad} accepted");
        }
        assert!(validate_capacity(1).is_ok());
        assert!(validate_capacity(0).is_err());
    }

    /// Proves expiries outside what RFC 3339 and the databases hold are refused.
    #[test]
    fn expiry_must_fit_rfc3339_years() {
        assert!(validate_expiry(SystemTime::now()).is_ok());
        let last = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
        assert!(validate_expiry(last).is_ok());
        assert!(format_rfc3339(last).is_ok());
        assert!(validate_expiry(last + Duration::from_secs(1)).is_err());
        assert!(validate_expiry(UNIX_EPOCH - Duration::from_secs(1)).is_err());
    }

    /// Proves the microsecond encoding round-trips on both sides of the epoch.
    #[test]
    fn unix_micros_round_trip() {
        let now = truncate_to_micros(SystemTime::now());
        assert_eq!(from_unix_micros(to_unix_micros(now)), now);
        let before = UNIX_EPOCH - Duration::from_micros(1_500_000);
        assert_eq!(to_unix_micros(before), -1_500_000);
        assert_eq!(from_unix_micros(-1_500_000), before);
    }

    /// Proves a patch tells `null` (clear) from an absent field (keep).
    #[test]
    fn patch_distinguishes_null_from_absent_expiry() {
        let absent: Patch = serde_json::from_str(r#"{"enabled":false}"#).expect("patch");
        assert_eq!(absent.expires_at, None);
        let null: Patch = serde_json::from_str(r#"{"expires_at":null}"#).expect("patch");
        assert_eq!(null.expires_at, Some(None));
        let set: Patch =
            serde_json::from_str(r#"{"expires_at":"2030-01-02T03:04:05+02:00"}"#).expect("patch");
        let expected = UNIX_EPOCH + Duration::from_secs(1_893_546_245);
        assert_eq!(set.expires_at, Some(Some(expected)));
        assert!(serde_json::from_str::<Patch>(r#"{"bogus":1}"#).is_err());
    }

    /// Proves a create body needs only `client_id` and defaults `enabled` to true.
    #[test]
    fn new_client_body_defaults() {
        let body: NewClient = serde_json::from_str(r#"{"client_id":"c1"}"#).expect("body");
        assert_eq!(body, NewClient::new("c1"));
        assert!(serde_json::from_str::<NewClient>(r#"{"client_id":"c1","x":1}"#).is_err());
    }

    /// Proves the view serializes to exactly the documented fields with RFC 3339 times.
    #[test]
    fn view_json_has_documented_shape() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let view = ClientView {
            client_id: "c1".into(),
            api_key: "tg_abcde…".into(),
            rate_per_sec: 1.5,
            capacity: 20,
            tokens: 20.0,
            last_refill: t,
            enabled: true,
            expires_at: None,
            created_at: t,
        };
        let json = serde_json::to_value(&view).expect("json");
        let mut keys: Vec<_> = json.as_object().expect("object").keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "api_key",
                "capacity",
                "client_id",
                "created_at",
                "enabled",
                "expires_at",
                "last_refill",
                "rate_per_sec",
                "tokens"
            ]
        );
        assert_eq!(json["created_at"], "2023-11-14T22:13:20Z");
        assert!(json["expires_at"].is_null());
        let back: ClientView = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, view);
    }
}
