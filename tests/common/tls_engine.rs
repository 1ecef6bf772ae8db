//! Test PKIs (rcgen): the Docker engine behind TLS, as a remote engine on port 2376 is (a TLS
//! front, tokio-rustls, that demands a client certificate of the test CA and forwards to the
//! real engine), and the gateway's own HTTPS certificates ([`SiteCa`]: a CA and server leaves
//! for given host names, written as PEM files).
//!
//! ```ignore
//! let pki = TestPki::new();                    // pki.client_dir(): ca.pem, cert.pem, key.pem
//! let front = TlsEngineFront::start(&pki).await; // front.host = "tcp://127.0.0.1:PORT"
//! let sites = SiteCa::new();
//! let a = sites.leaf("a", &["a.test"]);         // a.cert, a.key: files; a.der: the leaf
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

/// A server certificate written to disk for the gateway's `tls.certificates`.
pub struct SiteLeaf {
    /// The PEM certificate file.
    pub cert: std::path::PathBuf,
    /// The PEM private key file.
    pub key: std::path::PathBuf,
    /// The leaf, as a client receives it.
    pub der: CertificateDer<'static>,
}

/// A CA for the gateway's HTTPS listeners and the leaves it signs, in a temporary directory
/// that lives as long as this value.
pub struct SiteCa {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

impl SiteCa {
    /// A fresh CA ("idlewatcher test site CA").
    pub fn new() -> Self {
        Self {
            ca: new_ca("idlewatcher test site CA"),
            dir: tempfile::Builder::new()
                .prefix("iwt-sites-")
                .tempdir()
                .expect("a temporary directory"),
        }
    }

    /// A server certificate for `names` (SANs; the common name is the first), written as
    /// `STEM.pem` and `STEM.key`.
    pub fn leaf(&self, stem: &str, names: &[&str]) -> SiteLeaf {
        let owned: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(owned).expect("leaf params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        let key = KeyPair::generate().expect("a key");
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("a signed certificate");
        let cert_path = self.dir.path().join(format!("{stem}.pem"));
        let key_path = self.dir.path().join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("cert written");
        std::fs::write(&key_path, key.serialize_pem()).expect("key written");
        SiteLeaf {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
        }
    }

    /// A file named `name` with `contents`, beside the leaves (a broken PEM, say).
    pub fn file(&self, name: &str, contents: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("file written");
        path
    }

    /// The CA certificate in PEM (for a client or a browser to trust).
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// The CA certificate in DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// A rustls client config trusting only this CA, with ALPN `alpn` offered.
    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der()).expect("the CA as a root");
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
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
