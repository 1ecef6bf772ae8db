//! A Docker engine reached over TLS, the way `docker --tlsverify` does it: the directory of
//! `DOCKER_CERT_PATH` (`ca.pem`, `cert.pem`, `key.pem`), trusting ONLY that CA (not the system
//! roots: a public certificate for the engine's name must not be enough to drive it) and showing
//! the client certificate the engine demands.
//!
//! bollard's own TLS client adds the system roots, so this is a bollard custom transport: a
//! hyper client on hyper-rustls with our rustls `ClientConfig` (the `aws-lc-rs` provider, as the
//! rest of the build).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bollard::{BollardRequest, Docker, API_DEFAULT_VERSION};
use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{Either, Full, StreamBody};
use hyper::body::Frame;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// bollard's request body (its own alias is private; this is the same type).
type Body = Either<
    Full<Bytes>,
    StreamBody<Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send>>>,
>;

/// Why the TLS material of an engine cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EngineTlsError {
    /// A file is missing, unreadable or holds nothing usable.
    #[error("\"{}\": {message}", path.display())]
    File {
        /// The file (`ca.pem`, `cert.pem` or `key.pem` in the directory).
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the material (a key that does not match, no protocol version).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The rustls client configuration for the engine whose material is in `dir`.
pub(super) fn client_config(dir: &Path) -> Result<ClientConfig, EngineTlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(&dir.join("ca.pem"))? {
        roots.add(cert)?;
    }
    let chain = certificates(&dir.join("cert.pem"))?;
    let key_path = dir.join("key.pem");
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| EngineTlsError::File {
        path: key_path,
        message: format!("no usable private key ({e})"),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?)
}

/// Every certificate of a PEM file (at least one).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, EngineTlsError> {
    let file_error = |message: String| EngineTlsError::File {
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| file_error(format!("not a PEM certificate ({e})")))?;
    if certs.is_empty() {
        return Err(file_error("no PEM certificate in it".to_string()));
    }
    Ok(certs)
}

/// A bollard client for `host` (`tcp://h:p` or `https://h:p`) over TLS with `config`;
/// `timeout_secs` is bollard's per-request timeout.
pub(super) fn client(
    host: &str,
    config: ClientConfig,
    timeout_secs: u64,
) -> Result<Docker, bollard::errors::Error> {
    let authority = host
        .trim_start_matches("tcp://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let connector: HttpsConnector<HttpConnector> = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build(connector);
    let transport = move |request: BollardRequest| {
        let client = client.clone();
        async move {
            client
                .request(request)
                .await
                .map_err(bollard::errors::Error::from)
        }
    };
    Docker::connect_with_custom_transport(
        transport,
        Some(format!("https://{authority}")),
        timeout_secs,
        API_DEFAULT_VERSION,
    )
}
