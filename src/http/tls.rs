//! HTTPS: the certificates the TLS listeners choose from by SNI, and the listeners themselves.
//!
//! TLS is terminated by Pingora's rustls listener (`pingora` feature `rustls`): TLS 1.2 and
//! 1.3, ALPN `h2` then `http/1.1`. Pingora's `TlsSettings` takes one certificate file pair or
//! a rustls [`ResolvesServerCert`]; several certificates chosen by SNI need the latter, so
//! [`Certificates`] is one: the first certificate whose names cover the client's SNI (exact or
//! wildcard, checked by webpki as a client would), else the first certificate (also when the
//! client sends no SNI, as for an IP address).
//!
//! The certificate set sits behind an `ArcSwap`: [`Certificates::reload`] reads every file
//! again and swaps the whole set at once (a bad file leaves the current set serving), so a
//! configuration reload can re-read renewed certificates without touching the listeners. A
//! handshake in progress keeps the set it started with.
//!
//! After the handshake the connection is a Pingora `Stream` like any other: the
//! [`EarlyHold`](crate::http::EarlyHold) in front of the proxy serves HTTP/1.1 over TLS with the
//! client deadlines and gives h2 to Pingora's HTTP/2 server; the gate sees the same requests
//! either way.

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::ALPN;
use rustls::pki_types::ServerName;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{load_certified_key, CertificateError, CertificateFiles, TlsConfig};
use crate::http::proxy::LISTENER_READ_BUFFER;

/// The certificates of the HTTPS listeners, picked by SNI; the first is the default.
#[derive(Debug)]
pub struct Certificates {
    current: ArcSwap<Vec<Arc<CertifiedKey>>>,
}

/// Reads every pair of `files`, in order; the first failure names its file.
fn load_all(files: &[CertificateFiles]) -> Result<Vec<Arc<CertifiedKey>>, CertificateError> {
    files
        .iter()
        .map(|pair| load_certified_key(pair).map(Arc::new))
        .collect()
}

impl Certificates {
    /// Reads every certificate of `tls` (what `-t` checked: the same function reads them).
    pub fn load(tls: &TlsConfig) -> Result<Arc<Self>, CertificateError> {
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(load_all(&tls.certificates)?),
        }))
    }

    /// Reads the certificates of `tls` again (renewed files, or another list) and serves them
    /// from the next handshake on. On error nothing changes: the set in use keeps serving.
    /// Safe to call at any time, from any thread; meant for a configuration reload.
    pub fn reload(&self, tls: &TlsConfig) -> Result<(), CertificateError> {
        let fresh = load_all(&tls.certificates)?;
        self.current.store(Arc::new(fresh));
        Ok(())
    }

    /// How many certificates are served.
    pub fn len(&self) -> usize {
        self.current.load().len()
    }

    /// Whether no certificate is served (never, once loaded from a valid configuration).
    pub fn is_empty(&self) -> bool {
        self.current.load().is_empty()
    }

    /// The certificate for `sni`: the first whose names cover it, else the first of all.
    pub fn for_name(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let set = self.current.load();
        let named = sni
            .and_then(|name| ServerName::try_from(name).ok())
            .and_then(|name| set.iter().find(|key| covers(key, &name)));
        named.or_else(|| set.first()).cloned()
    }
}

/// Whether the leaf of `key` is valid for `name` (its SANs, wildcards as a client reads them).
fn covers(key: &CertifiedKey, name: &ServerName<'_>) -> bool {
    let Some(leaf) = key.cert.first() else {
        return false;
    };
    webpki::EndEntityCert::try_from(leaf)
        .is_ok_and(|leaf| leaf.verify_is_valid_for_subject_name(name).is_ok())
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = client_hello.server_name();
        tracing::debug!(sni = sni.unwrap_or("(none)"), "TLS handshake");
        self.for_name(sni)
    }
}

/// An HTTPS listener on `address` serving `certificates`: TLS 1.2+, ALPN h2 and http/1.1.
/// Add it to the same service as the HTTP listeners
/// ([`IdleProxy::service`](crate::http::IdleProxy::service)) so that it goes through the same
/// early hold and gate.
pub fn listener(
    address: &str,
    certificates: &Arc<Certificates>,
) -> pingora::Result<ListenerConfig> {
    // No files: the resolver replaces them (Pingora then reads none).
    let mut settings = TlsSettings::intermediate("", "")?;
    settings.set_cert_resolver(Arc::clone(certificates) as Arc<dyn ResolvesServerCert>);
    settings.set_alpn(ALPN::H2H1);
    // As for cleartext: no L4 read buffer under rustls, whose own record buffer is enough; a
    // held connection does not keep 64 KiB for it.
    Ok(ListenerConfig::tcp(address.to_string())
        .tls(settings)
        .l4_buffer(L4BufferSettings::default().read(LISTENER_READ_BUFFER)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `names`, written to `dir` as `stem.pem`, `stem.key`.
    fn pair(dir: &std::path::Path, stem: &str, names: &[&str]) -> CertificateFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let files = CertificateFiles {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    fn leaf_of(key: &CertifiedKey) -> Vec<u8> {
        key.cert[0].to_vec()
    }

    #[test]
    fn the_sni_picks_the_covering_certificate_else_the_first_and_reload_swaps_the_set() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a", &["a.test", "*.a.test"]);
        let b = pair(dir.path(), "b", &["b.test"]);
        let mut tls = TlsConfig {
            listen: vec!["127.0.0.1:0".to_string()],
            certificates: vec![a.clone(), b.clone()],
        };
        let certificates = Certificates::load(&tls).unwrap();
        assert_eq!(certificates.len(), 2);
        let a_leaf = leaf_of(&certificates.for_name(Some("a.test")).unwrap());
        let b_leaf = leaf_of(&certificates.for_name(Some("b.test")).unwrap());
        assert_ne!(a_leaf, b_leaf);
        let leaf = |sni| leaf_of(&certificates.for_name(sni).unwrap());
        assert_eq!(leaf(Some("www.a.test")), a_leaf, "wildcard");
        assert_eq!(leaf(Some("B.TEST")), b_leaf, "names are case-insensitive");
        assert_eq!(leaf(Some("x.www.a.test")), a_leaf, "not covered: the first");
        assert_eq!(leaf(Some("other.test")), a_leaf, "unknown: the first");
        assert_eq!(leaf(None), a_leaf, "no SNI: the first");

        // Reloaded in the other order: b is the default now.
        tls.certificates = vec![b.clone(), a.clone()];
        certificates.reload(&tls).unwrap();
        assert_eq!(leaf(Some("other.test")), b_leaf);
        assert_eq!(leaf(Some("a.test")), a_leaf);
        // A file gone: an error naming it, and the set in use keeps serving.
        std::fs::remove_file(&a.key).unwrap();
        let error = certificates.reload(&tls).unwrap_err();
        assert!(error.to_string().contains("a.key"), "{error}");
        assert_eq!(leaf(Some("other.test")), b_leaf);
        assert_eq!(certificates.len(), 2);
    }
}
