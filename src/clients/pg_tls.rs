//! TLS to PostgreSQL, with libpq's meaning of `sslmode` and `sslrootcert` in the store URL.
//!
//! `tokio-postgres` itself knows only `disable`, `prefer` and `require`, and has no
//! `sslrootcert`. So the two parameters are taken out of the URL here, and the rest goes to
//! `tokio-postgres`:
//!
//! | `sslmode`           | TLS                       | server certificate checked            |
//! |---------------------|---------------------------|---------------------------------------|
//! | `disable`           | never                     | –                                     |
//! | `prefer` (default)  | when the server offers it | no (as libpq without a root file)     |
//! | `require`           | always                    | against `sslrootcert` if one is given |
//! | `verify-ca`         | always                    | chain to `sslrootcert`                |
//! | `verify-full`       | always                    | chain to `sslrootcert` and host name  |
//!
//! The unverified modes still encrypt and still check the handshake signature; they only
//! trust whichever certificate the server shows, as libpq does.

use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use rustls::{Error as TlsError, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::store::StoreError;

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt, trust any certificate.
    Nothing,
    /// The chain must end at a root from `sslrootcert`.
    Chain,
    /// As `Chain`, and the certificate must name the host connected to.
    ChainAndHost,
}

/// The URL for `tokio-postgres`, and the TLS connector for it.
pub struct PgTls {
    pub url: String,
    pub connector: MakeRustlsConnect,
    pub verify: Verify,
}

/// Splits libpq's TLS parameters off `url` and builds the connector they ask for.
pub fn from_url(url: &str) -> Result<PgTls, StoreError> {
    let invalid = |m: String| StoreError::Invalid(m);
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let mut mode = None;
    let mut root = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode_str(value).decode_utf8_lossy().into_owned();
        match key {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => kept.push(pair),
        }
    }
    // The mode tokio-postgres gets (it checks no certificate itself), and the check we add.
    let (pg_mode, verify) = match mode.as_deref().unwrap_or("prefer") {
        "disable" => ("sslmode=disable", Verify::Nothing),
        "prefer" | "allow" => ("sslmode=prefer", Verify::Nothing),
        "require" if root.is_some() => ("sslmode=require", Verify::Chain),
        "require" => ("sslmode=require", Verify::Nothing),
        "verify-ca" => ("sslmode=require", Verify::Chain),
        "verify-full" => ("sslmode=require", Verify::ChainAndHost),
        other => {
            return Err(invalid(format!(
                "unknown sslmode {other:?} (disable, prefer, require, verify-ca, verify-full)"
            )))
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = match (verify, root) {
        (Verify::Nothing, _) => None,
        (_, None) => {
            let mode = mode.unwrap_or_default();
            let why = "the CA file that signed the server's certificate";
            return Err(invalid(format!(
                "sslmode={mode} needs sslrootcert=PATH ({why})"
            )));
        }
        (_, Some(path)) => {
            let roots = load_roots(&path)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| invalid(format!("sslrootcert {path}: {e}")))?;
            Some(webpki)
        }
    };
    let verifier = Arc::new(PgVerifier {
        chain,
        check_host: verify == Verify::ChainAndHost,
        algorithms: provider.signature_verification_algorithms,
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("postgres tls: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    kept.push(pg_mode);
    Ok(PgTls {
        url: format!("{base}?{}", kept.join("&")),
        connector: MakeRustlsConnect::new(config),
        verify,
    })
}

fn load_roots(path: &str) -> Result<RootCertStore, StoreError> {
    let invalid = |m: String| StoreError::Invalid(format!("sslrootcert {path}: {m}"));
    let pem = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| invalid(e.to_string()))?;
        roots.add(cert).map_err(|e| invalid(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(invalid("no PEM certificate in the file".into()));
    }
    Ok(roots)
}

/// The server-certificate check `sslmode` asks for. The handshake signature is always
/// verified; the certificate itself only against a root (`chain`), and its name only for
/// `verify-full`.
#[derive(Debug)]
struct PgVerifier {
    /// `None`: trust whichever certificate the server shows (`prefer`, `require`).
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_host: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PgVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let Some(webpki) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // webpki checks the name last, so a name error means the chain was good.
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_host => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        match from_url(url) {
            Err(StoreError::Invalid(m)) => m,
            Err(e) => panic!("{url}: unexpected error {e}"),
            Ok(_) => panic!("{url}: accepted"),
        }
    }

    #[test]
    fn libpq_tls_parameters_are_translated_for_tokio_postgres() {
        let t = from_url("postgres://u@db/x?application_name=a&sslmode=require").unwrap();
        assert_eq!(
            t.url,
            "postgres://u@db/x?application_name=a&sslmode=require"
        );
        assert_eq!(t.verify, Verify::Nothing);
        let t = from_url("postgres://u@db/x").unwrap();
        assert_eq!(t.url, "postgres://u@db/x?sslmode=prefer");
        let t = from_url("postgres://u@db/x?sslmode=disable").unwrap();
        assert_eq!(t.url, "postgres://u@db/x?sslmode=disable");
    }

    #[test]
    fn verifying_modes_need_a_readable_root_file() {
        assert!(err("postgres://u@db/x?sslmode=verify-full").contains("needs sslrootcert"));
        assert!(
            err("postgres://u@db/x?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem")
                .contains("/nonexistent/ca.pem")
        );
        assert!(err("postgres://u@db/x?sslmode=verify-everything").contains("unknown sslmode"));
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        let url = format!(
            "postgres://u@db/x?sslmode=verify-full&sslrootcert={}",
            empty.display()
        );
        assert!(err(&url).contains("no PEM certificate"));
    }
}
