//! Certificates: loading, SNI selection, and demo self-signed generation.
//!
//! Each https listener owns an [`SniResolver`] that rustls asks on every handshake. The resolver
//! reads the *current* [`CertStore`] through an `ArcSwap`, so a reload that re-reads the files
//! swaps certificates in place; handshakes never block on it.
//!
//! Names come from each certificate's subjectAltName DNS entries (the common name only when
//! there are none). Lookup: exact name, then the `*.parent` wildcard, then the default
//! certificate, which is also served to clients that send no SNI.

use crate::config::CertificatePaths;
use arc_swap::ArcSwap;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot write demo certificate {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One loaded certificate with what the resolver and operators need to know about it.
#[derive(Debug)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// Lower-case DNS names it is served for (may include `*.example.com`).
    pub names: Vec<String>,
    pub not_after: SystemTime,
    /// Hex serial number, handy to check which certificate is being served.
    pub serial: String,
    pub path: PathBuf,
}

/// The certificates of one listener.
#[derive(Debug)]
pub struct CertStore {
    certs: Vec<LoadedCert>,
    by_name: HashMap<String, usize>,
    default: usize,
}

impl CertStore {
    /// Loads every certificate (generating missing demo ones first).
    pub fn load(paths: &[CertificatePaths], default: usize) -> Result<CertStore, TlsError> {
        let mut certs = Vec::with_capacity(paths.len());
        for p in paths {
            if p.self_signed_if_missing && !p.cert.exists() && !p.key.exists() {
                write_self_signed(&p.cert, &p.key, &["localhost", "127.0.0.1", "::1"])?;
            }
            certs.push(load_pair(&p.cert, &p.key)?);
        }
        let mut by_name = HashMap::new();
        for (i, c) in certs.iter().enumerate() {
            for n in &c.names {
                // The first certificate listed for a name wins, as in nginx.
                by_name.entry(n.clone()).or_insert(i);
            }
        }
        Ok(CertStore {
            certs,
            by_name,
            default: default.min(paths.len().saturating_sub(1)),
        })
    }

    /// The certificate for an SNI name (`None`: no SNI sent).
    pub fn select(&self, sni: Option<&str>) -> Option<&LoadedCert> {
        let idx = sni
            .and_then(|name| {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                self.by_name.get(&name).copied().or_else(|| {
                    let (_, parent) = name.split_once('.')?;
                    self.by_name.get(&format!("*.{parent}")).copied()
                })
            })
            .unwrap_or(self.default);
        self.certs.get(idx)
    }

    pub fn certs(&self) -> &[LoadedCert] {
        &self.certs
    }
}

/// The rustls resolver of one listener, reading whatever store was swapped in last.
#[derive(Debug)]
pub struct SniResolver {
    store: ArcSwap<CertStore>,
}

impl SniResolver {
    pub fn new(store: CertStore) -> Self {
        SniResolver {
            store: ArcSwap::from_pointee(store),
        }
    }

    /// Serves `store` from the next handshake on.
    pub fn replace(&self, store: CertStore) {
        self.store.store(Arc::new(store));
    }

    pub fn current(&self) -> Arc<CertStore> {
        self.store.load_full()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let store = self.store.load();
        store.select(hello.server_name()).map(|c| c.key.clone())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Loads a PEM chain and key and checks that they belong together.
pub fn load_pair(cert_path: &Path, key_path: &Path) -> Result<LoadedCert, TlsError> {
    let cert_pem = read(cert_path)?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(cert_path, format!("bad PEM: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| invalid(cert_path, "no certificate found"))?;
    let key_pem = read(key_path)?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| invalid(key_path, format!("bad PEM: {e}")))?
        .ok_or_else(|| invalid(key_path, "no private key found"))?;
    let signing =
        any_supported_type(&key).map_err(|e| invalid(key_path, format!("unsupported key: {e}")))?;
    let (names, not_after, serial) = describe(leaf).map_err(|m| invalid(cert_path, m))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| invalid(key_path, format!("key does not match certificate: {e}")))?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
        not_after,
        serial,
        path: cert_path.to_path_buf(),
    })
}

fn describe(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, SystemTime, String), String> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(leaf.as_ref()).map_err(|e| format!("bad certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    let secs = cert.validity().not_after.timestamp().max(0) as u64;
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    Ok((names, not_after, cert.raw_serial_as_string()))
}

/// Writes a self-signed certificate and key (ECDSA P-256) for `names`; the key is mode 0600.
pub fn write_self_signed(cert: &Path, key: &Path, names: &[&str]) -> Result<(), TlsError> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| invalid(cert, format!("cannot generate certificate: {e}")))?;
    let write = |path: &Path, data: &str, private: bool| -> Result<(), TlsError> {
        let err = |source| TlsError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        use std::io::Write;
        opts.open(path)
            .and_then(|mut f| f.write_all(data.as_bytes()))
            .map_err(err)
    };
    write(key, &generated.key_pair.serialize_pem(), true)?;
    write(cert, &generated.cert.pem(), false)?;
    log::warn!(
        "generated a self-signed demo certificate at {} (not for production)",
        cert.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str, names: &[&str]) -> CertificatePaths {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        write_self_signed(&cert, &key, names).expect("write cert");
        CertificatePaths {
            cert,
            key,
            self_signed_if_missing: false,
        }
    }

    /// SNI picks the exact name, then a wildcard, then the default certificate.
    #[test]
    fn sni_selects_exact_then_wildcard_then_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = pair(dir.path(), "a", &["a.example.com"]);
        let w = pair(dir.path(), "w", &["*.example.org"]);
        let store = CertStore::load(&[a, w], 0).expect("load");
        let names = |sni: Option<&str>| store.select(sni).map(|c| c.names.clone());
        assert_eq!(
            names(Some("A.example.com")),
            Some(vec!["a.example.com".into()])
        );
        assert_eq!(
            names(Some("x.example.org")),
            Some(vec!["*.example.org".into()])
        );
        assert_eq!(
            names(Some("other.test")),
            Some(vec!["a.example.com".into()])
        );
        assert_eq!(names(None), Some(vec!["a.example.com".into()]));
    }

    /// A key that belongs to another certificate is refused with the key's path.
    #[test]
    fn mismatched_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = pair(dir.path(), "a", &["a.test"]);
        let b = pair(dir.path(), "b", &["b.test"]);
        let err = load_pair(&a.cert, &b.key).expect_err("must refuse");
        assert!(err.to_string().contains("b.key"), "{err}");
    }

    /// Missing demo files are generated once, with a private key only the owner can read.
    #[test]
    fn demo_certificate_is_generated_when_missing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = CertificatePaths {
            cert: dir.path().join("d/demo.crt"),
            key: dir.path().join("d/demo.key"),
            self_signed_if_missing: true,
        };
        let store = CertStore::load(std::slice::from_ref(&paths), 0).expect("load");
        assert!(store.certs()[0].names.contains(&"localhost".to_string()));
        let mode = std::fs::metadata(&paths.key)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
