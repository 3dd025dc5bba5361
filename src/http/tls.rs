//! HTTPS: a rustls server config from the PEM files `tls_cert` and `tls_key` (HTTP/1.1 over
//! TLS 1.2/1.3, ring as the crypto provider).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The acceptor for the configured certificate, `None` when TLS is off. `Err` says what is
/// wrong with which file.
pub fn acceptor(cfg: &crate::base::config::Config) -> Result<Option<TlsAcceptor>, String> {
    if cfg.http.tls_cert.as_os_str().is_empty() {
        return Ok(None);
    }
    let certs = load_certs(&cfg.http.tls_cert)?;
    let key = load_key(&cfg.http.tls_key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "tls_cert {} and tls_key {}: {e} (does the key belong to the certificate?)",
                cfg.http.tls_cert.display(),
                cfg.http.tls_key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let what = |e: &dyn std::fmt::Display| format!("tls_cert {}: {e}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| what(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| what(&e))?;
    if certs.is_empty() {
        return Err(what(&"no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("tls_key {}: {e}", path.display()))?;
    let mode = meta.permissions().mode();
    if mode & 0o007 != 0 {
        return Err(format!(
            "tls_key {}: the private key is readable or writable by every user (mode {:o}); \
             run `chmod 600 {}` (or 640 with a group the server runs in)",
            path.display(),
            mode & 0o777,
            path.display()
        ));
    }
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        format!(
            "tls_key {}: {e} (expected a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)",
            path.display()
        )
    })
}
