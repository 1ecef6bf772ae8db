//! How the PVE API's certificate is trusted: PVE installs its own CA, so the system roots rarely
//! apply. Three ways, exactly one configured: the CA file (chain and host name verified), a pin
//! on the SHA-256 of the leaf certificate (what the PVE GUI shows under Certificates), or no
//! check at all.
//!
//! Built as a rustls `ClientConfig` on the `aws-lc-rs` provider (reqwest's own) and handed to
//! reqwest, so every trust mode goes through one TLS stack.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::config::PveTrust;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read or holds no certificate.
    #[error("CA file {path}: {message}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the configuration (no usable protocol version).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// `AB:CD:…`, the way the PVE GUI and `openssl x509 -fingerprint -sha256` show a fingerprint,
/// so a user can compare the two at a glance.
pub fn format_fingerprint(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{b:02X}");
    }
    out
}

/// The SHA-256 of a DER certificate.
pub fn fingerprint_of(cert: &[u8]) -> [u8; 32] {
    Sha256::digest(cert).into()
}

/// The rustls client configuration for `trust`.
pub fn client_config(trust: &PveTrust) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let config = match trust {
        PveTrust::CaFile(path) => builder
            .with_root_certificates(load_roots(path)?)
            .with_no_client_auth(),
        PveTrust::Fingerprint(expected) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                expected: Some(*expected),
                provider,
            }))
            .with_no_client_auth(),
        PveTrust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                expected: None,
                provider,
            }))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// Every certificate of the PEM file at `path`.
fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let shown = path.display().to_string();
    let error = |message: String| TlsError::CaFile {
        path: shown.clone(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(error("holds no usable PEM certificate".to_string()));
    }
    Ok(roots)
}

/// Accepts the server's certificate when its leaf's SHA-256 is `expected` (`None`: any
/// certificate, the `insecure` mode). Handshake signatures are still verified, so the server
/// proves it holds the pinned certificate's key.
#[derive(Debug)]
struct PinnedVerifier {
    expected: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(expected) = self.expected else {
            return Ok(ServerCertVerified::assertion());
        };
        let actual = fingerprint_of(end_entity.as_ref());
        if actual == expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate fingerprint mismatch: expected {}, the server presented {}",
                format_fingerprint(&expected),
                format_fingerprint(&actual)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_read_like_the_pve_gui() {
        assert_eq!(format_fingerprint(&[0xab, 0x01, 0xff]), "AB:01:FF");
        assert_eq!(
            format_fingerprint(&fingerprint_of(b"abc")),
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[test]
    fn a_pin_rejects_another_certificate_naming_both() {
        let verifier = PinnedVerifier {
            expected: Some([7; 32]),
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        };
        let cert = CertificateDer::from(b"not really a certificate".to_vec());
        let name = ServerName::try_from("pve.lan").unwrap();
        let err = verifier
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format_fingerprint(&[7; 32])), "{err}");
        assert!(
            err.contains(&format_fingerprint(&fingerprint_of(
                b"not really a certificate"
            ))),
            "{err}"
        );
    }
}
