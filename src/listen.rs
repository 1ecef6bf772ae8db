//! Checking, before anything starts, that every listen address can be bound.
//!
//! Pingora retries a listen address that is in use once a second, forever: a gateway started
//! twice, or on a port another program holds, would never say so. The binary calls
//! [`check_free`] with every address it is about to listen on (HTTP, and any stream front's
//! TCP and UDP ports) and exits with an error naming the first one that cannot be bound. Not
//! when taking over a running instance's sockets (`-u`): those are in use by design.

use std::net::{TcpListener, UdpSocket};

/// How an address is listened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A TCP listener (HTTP, TCP streams).
    Tcp,
    /// A UDP socket.
    Udp,
}

/// An address that cannot be listened on.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} ({transport:?}): {source}")]
pub struct ListenError {
    /// The address, as configured.
    pub address: String,
    /// TCP or UDP.
    pub transport: Transport,
    /// Why (address in use, permission denied, not a local address…).
    #[source]
    pub source: std::io::Error,
}

/// Binds each of `addresses` once and releases it at once; every address that cannot be bound
/// is returned, in order.
pub fn check_free<'a>(
    addresses: impl IntoIterator<Item = (Transport, &'a str)>,
) -> Vec<ListenError> {
    addresses
        .into_iter()
        .filter_map(|(transport, address)| {
            let bound = match transport {
                Transport::Tcp => TcpListener::bind(address).map(drop),
                Transport::Udp => UdpSocket::bind(address).map(drop),
            };
            bound.err().map(|source| ListenError {
                address: address.to_string(),
                transport,
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_in_use_is_named_and_a_free_one_passes() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap().to_string();
        let errors = check_free([(Transport::Tcp, address.as_str())]);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains(&address), "{}", errors[0]);
        drop(taken);
        assert!(check_free([(Transport::Tcp, address.as_str())]).is_empty());
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = udp.local_addr().unwrap().to_string();
        assert_eq!(check_free([(Transport::Udp, address.as_str())]).len(), 1);
    }
}
