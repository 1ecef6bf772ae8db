//! Reading one HTTPS certificate: its PEM chain and its private key, checked to belong together.
//!
//! Why in `config`: `idlewatcher -t` must find an unreadable, malformed or mismatched pair
//! before anything listens, naming the file (and, through the walker, the line); the HTTPS
//! listeners load the very same pairs with the very same function
//! ([`http::tls`](crate::http::tls)), so what `-t` accepts is exactly what serves.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A certificate and key pair as written in `tls.certificates` (`{ cert, key }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// PEM file with the leaf certificate first, then any intermediates (`cert`).
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1) (`key`).
    pub key: PathBuf,
}

/// Why a certificate pair cannot be served; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The file cannot be read (missing, permissions).
    #[error("cannot read \"{}\": {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate, or a malformed one.
    #[error("\"{}\": not a PEM certificate chain ({reason})", file.display())]
    BadCertificate {
        /// The certificate file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file holds no usable PEM private key.
    #[error("\"{}\": no usable PEM private key ({reason})", file.display())]
    BadKey {
        /// The key file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key is a valid key, but not the one the certificate was issued for.
    #[error(
        "\"{}\" is not the private key of the certificate in \"{}\" ({reason})",
        key.display(),
        cert.display()
    )]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's verdict.
        reason: String,
    },
}

impl CertificateError {
    /// Whether the problem is the key file's (else the certificate file's): where `-t` points.
    pub fn is_about_key(&self, files: &CertificateFiles) -> bool {
        match self {
            CertificateError::Read { file, .. } => *file == files.key,
            CertificateError::BadKey { .. } | CertificateError::Mismatch { .. } => true,
            CertificateError::BadCertificate { .. } => false,
        }
    }
}

/// The crypto provider keys are loaded with: the one every other rustls use in this build
/// names explicitly (aws-lc-rs), independent of any process default.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(file: &Path) -> Result<Vec<u8>, CertificateError> {
    std::fs::read(file).map_err(|source| CertificateError::Read {
        file: file.to_path_buf(),
        source,
    })
}

/// Reads `files` and checks that the key is the certificate's: the pair ready to serve.
/// Called for `-t` and start-up, and again whenever the certificates are to be re-read (each
/// call reads the files afresh; nothing is cached).
pub fn load_certified_key(files: &CertificateFiles) -> Result<CertifiedKey, CertificateError> {
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let bad_cert = |reason: String| CertificateError::BadCertificate {
        file: files.cert.clone(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_cert(e.to_string()))?;
    if chain.is_empty() {
        return Err(bad_cert("no \"BEGIN CERTIFICATE\" block".to_string()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertificateError::BadKey {
        file: files.key.clone(),
        reason: e.to_string(),
    })?;
    let signing =
        provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| CertificateError::BadKey {
                file: files.key.clone(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(CertificateError::Mismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
                reason: "the certificate's public key differs".to_string(),
            })
        }
        // A key type whose public half rustls cannot derive: nothing to compare, accepted.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(other) => Err(bad_cert(other.to_string())),
    }
}
