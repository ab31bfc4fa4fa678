//! TLS to the broker with rustls (the `ring` provider): the CA certificates
//! to trust and an optional client certificate, read from PEM files at start
//! so a wrong path or file fails the service at once, naming the file.

use super::{MqttError, TlsConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the TLS settings of `[mqtt.tls]` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read PEM file {path}: {source}")]
    ReadPem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("CA file {path}: no usable certificate ({rejected} rejected)")]
    NoUsableCa { path: PathBuf, rejected: usize },
    #[error("client_cert and client_key must be given together")]
    ClientAuthIncomplete,
    #[error("client certificate or key rejected: {0}")]
    ClientAuth(rustls::Error),
    #[error("TLS setup: {0}")]
    Setup(rustls::Error),
}

/// The rustls client configuration for `tls`.
pub(super) fn client_config(tls: &TlsConfig) -> Result<Arc<ClientConfig>, MqttError> {
    let mut roots = RootCertStore::empty();
    let (added, rejected) = roots.add_parsable_certificates(certificates(&tls.ca_file)?);
    if added == 0 {
        return Err(TlsError::NoUsableCa {
            path: tls.ca_file.clone(),
            rejected,
        }
        .into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_root_certificates(roots);
    let config = match (&tls.client_cert, &tls.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::ReadPem {
                path: key.clone(),
                source,
            })?;
            builder
                .with_client_auth_cert(certificates(cert)?, key)
                .map_err(TlsError::ClientAuth)?
        }
        _ => return Err(TlsError::ClientAuthIncomplete.into()),
    };
    Ok(Arc::new(config))
}

/// All certificates of a PEM file; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |source| TlsError::ReadPem {
        path: path.to_path_buf(),
        source,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(read_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_is_named() {
        let tls = TlsConfig {
            ca_file: "/nonexistent/ca.pem".into(),
            ..Default::default()
        };
        let error = client_config(&tls).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn a_client_cert_needs_its_key() {
        let tls = TlsConfig {
            client_cert: Some("/etc/hostname".into()),
            ..Default::default()
        };
        // The system CA bundle may be missing on a bare machine; only check
        // the pairing error when it is there.
        if tls.ca_file.exists() {
            let error = client_config(&tls).unwrap_err();
            assert!(
                matches!(error, MqttError::Tls(TlsError::ClientAuthIncomplete)),
                "{error}"
            );
        }
    }
}
