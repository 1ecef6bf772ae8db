//! The Docker engine behind TLS, as a remote engine on port 2376 is: a test PKI made here (rcgen)
//! and a TLS front (tokio-rustls) that demands a client certificate of that CA and forwards to
//! the real engine.
//!
//! ```ignore
//! let pki = TestPki::new();                    // pki.client_dir(): ca.pem, cert.pem, key.pem
//! let front = TlsEngineFront::start(&pki).await; // front.host = "tcp://127.0.0.1:PORT"
//! ```

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::engine::{engine_addr, EngineAddr};

/// A certificate and its key, in PEM and DER.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

/// A CA, the engine's server certificate (`localhost`, `127.0.0.1`) and a client certificate,
/// plus a second, unrelated CA; Docker's client directories for both are written to disk.
pub struct TestPki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    server: Leaf,
    dirs: tempfile::TempDir,
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a key")).expect("a CA")
}

fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> Leaf {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("leaf params");
    params.extended_key_usages = vec![usage];
    params
        .distinguished_name
        .push(DnType::CommonName, "idlewatcher test");
    let key = KeyPair::generate().expect("a key");
    let cert = params.signed_by(&key, ca).expect("a signed certificate");
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().clone(),
        key_der: key.serialize_der(),
    }
}

impl TestPki {
    /// A fresh PKI, with `good/` (this CA, the client certificate) and `wrong-ca/` (another CA,
    /// the same client certificate) written as Docker's `ca.pem`, `cert.pem`, `key.pem`.
    pub fn new() -> Self {
        let ca = new_ca("idlewatcher test CA");
        let other = new_ca("some other CA");
        let server = leaf(
            &ca,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = leaf(&ca, &["client"], ExtendedKeyUsagePurpose::ClientAuth);
        let dirs = tempfile::Builder::new()
            .prefix("iwt-pki-")
            .tempdir()
            .expect("a temporary directory");
        for (dir, ca_pem) in [("good", ca.pem()), ("wrong-ca", other.pem())] {
            let dir = dirs.path().join(dir);
            std::fs::create_dir(&dir).expect("a cert directory");
            std::fs::write(dir.join("ca.pem"), ca_pem).expect("ca.pem");
            std::fs::write(dir.join("cert.pem"), &client.cert_pem).expect("cert.pem");
            std::fs::write(dir.join("key.pem"), &client.key_pem).expect("key.pem");
        }
        Self {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            server,
            dirs,
        }
    }

    /// `…/good`: this CA and the client certificate.
    pub fn good_dir(&self) -> std::path::PathBuf {
        self.dirs.path().join("good")
    }

    /// `…/wrong-ca`: another CA (the engine's certificate is not trusted) and the client
    /// certificate.
    pub fn wrong_ca_dir(&self) -> std::path::PathBuf {
        self.dirs.path().join("wrong-ca")
    }

    /// The CA in PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The engine side: this server certificate, client certificates of this CA required.
    fn server_config(&self) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("the CA as a root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("a client verifier");
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![self.server.cert_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server.key_der.clone())),
            )
            .expect("a TLS server config")
    }
}

/// The engine behind TLS with client certificates (`tcp://127.0.0.1:PORT`), on the test's
/// runtime; stops when dropped.
pub struct TlsEngineFront {
    /// `tcp://127.0.0.1:PORT`.
    pub host: String,
    accept: tokio::task::JoinHandle<()>,
}

impl TlsEngineFront {
    /// Listens on an ephemeral loopback port; every connection that completes the handshake
    /// (client certificate of `pki`'s CA) is forwarded to the engine.
    pub async fn start(pki: &TestPki) -> Self {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the TLS front");
        let host = format!("tcp://{}", listener.local_addr().expect("local addr"));
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut client) = acceptor.accept(client).await else {
                        return; // Refused by the handshake: nothing to forward.
                    };
                    let _ = match engine_addr() {
                        EngineAddr::Unix(path) => match tokio::net::UnixStream::connect(path).await
                        {
                            Ok(mut up) => tokio::io::copy_bidirectional(&mut client, &mut up).await,
                            Err(e) => Err(e),
                        },
                        EngineAddr::Tcp(addr) => match tokio::net::TcpStream::connect(addr).await {
                            Ok(mut up) => tokio::io::copy_bidirectional(&mut client, &mut up).await,
                            Err(e) => Err(e),
                        },
                    };
                });
            }
        });
        Self { host, accept }
    }
}

impl Drop for TlsEngineFront {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
