//! One Proxmox LXC guest driven as a backend: power calls through PVE tasks, status from
//! `status/current`, the address from the guest's live interfaces (or its static `net0` address).
//!
//! * `stop` is PVE's graceful `shutdown` with `timeout` and `forceStop=1` (the guest is down when
//!   the task ends); `kill` is PVE's hard `stop`. Neither is ever mapped onto the other.
//! * Every power call's task is followed to its end: `OK` and `WARNINGS: N` are success.
//! * "already running" on start and "not running" on stop are success (idempotent calls).
//! * A start is never attempted while the poller saw the guest locked (backup, migrate…).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::Deserialize;

use super::client::{encode, PveClient, PveError};
use super::task::{follow, TaskError};
use crate::providers::{BackendStatus, Provider, ProviderError};

/// Longest a start task is followed (PVE's own start timeout is of this order).
const START_LIMIT: Duration = Duration::from_secs(120);
/// Added to `stop_timeout` for the shutdown task (the guest's shutdown, then the forced stop).
const STOP_MARGIN: Duration = Duration::from_secs(30);
/// Longest a hard stop task is followed.
const KILL_LIMIT: Duration = Duration::from_secs(60);
/// How long a running guest may take to show an address (DHCP) before the wake gives up on it.
const ADDRESS_WAIT: Duration = Duration::from_secs(30);
/// First pause between two reads of the interfaces; doubles up to 1 s.
const ADDRESS_FIRST_INTERVAL: Duration = Duration::from_millis(100);

/// `status/current`'s `data` (the part we read).
#[derive(Debug, Deserialize)]
struct CurrentStatus {
    status: String,
    #[serde(default)]
    lock: Option<String>,
}

/// One entry of `interfaces`.
#[derive(Debug, Deserialize)]
struct Interface {
    name: String,
    #[serde(default)]
    inet: Option<String>,
    #[serde(default)]
    inet6: Option<String>,
}

/// The status PVE reports, as a [`BackendStatus`].
pub(super) fn status_from(pve: &str) -> BackendStatus {
    match pve {
        "running" => BackendStatus::Running,
        "paused" => BackendStatus::Paused,
        _ => BackendStatus::Stopped,
    }
}

/// Whether PVE's message says the guest does not exist (`Configuration file
/// 'nodes/pve1/lxc/101.conf' does not exist`, or a 404).
fn says_missing(message: &str) -> bool {
    message.contains("does not exist") || message.contains("no such")
}

/// The locks PVE holds on guests (`backup`, `migrate`…), by vmid, as last seen by the poller
/// or a status read: shared by the drivers, which attempt no start while a lock holds.
#[derive(Debug, Default)]
pub struct GuestLocks(Mutex<HashMap<u32, String>>);

impl GuestLocks {
    /// The lock guest `vmid` holds, as last seen.
    pub fn of(&self, vmid: u32) -> Option<String> {
        self.0.lock().get(&vmid).cloned()
    }

    /// Records what was just seen of guest `vmid`; the lock it had before.
    pub fn set(&self, vmid: u32, lock: Option<&str>) -> Option<String> {
        let mut locks = self.0.lock();
        match lock {
            Some(lock) => locks.insert(vmid, lock.to_string()),
            None => locks.remove(&vmid),
        }
    }
}

/// One LXC guest.
pub struct ProxmoxGuest {
    client: PveClient,
    locks: Arc<GuestLocks>,
    node: String,
    vmid: u32,
    describe: String,
}

impl std::fmt::Debug for ProxmoxGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

impl ProxmoxGuest {
    /// The guest `vmid` on `node`; nothing is checked here (it may not exist yet).
    pub fn new(client: PveClient, locks: Arc<GuestLocks>, node: &str, vmid: u32) -> Self {
        Self {
            client,
            locks,
            node: node.to_string(),
            vmid,
            describe: describe(node, vmid),
        }
    }

    fn path(&self, tail: &str) -> String {
        format!("/nodes/{}/lxc/{}{tail}", encode(&self.node), self.vmid)
    }

    /// A failure of `action`, in the provider's terms.
    fn api_error(&self, action: &'static str, error: PveError) -> ProviderError {
        if says_missing(error.api_message()) {
            return ProviderError::NotFound {
                backend: self.describe.clone(),
            };
        }
        ProviderError::Api {
            action,
            backend: self.describe.clone(),
            message: error.to_string(),
        }
    }

    fn task_error(&self, action: &'static str, error: TaskError) -> ProviderError {
        match error {
            TaskError::Api(e) => self.api_error(action, e),
            TaskError::Failed(text) if says_missing(&text) => ProviderError::NotFound {
                backend: self.describe.clone(),
            },
            other => ProviderError::Api {
                action,
                backend: self.describe.clone(),
                message: other.to_string(),
            },
        }
    }

    /// `POST status/{call}` then follows its task. `done_already` recognises PVE's refusal
    /// meaning "already in that state", which counts as success.
    async fn power(
        &self,
        action: &'static str,
        call: &str,
        form: &[(&str, String)],
        limit: Duration,
        done_already: &str,
    ) -> Result<(), ProviderError> {
        let upid: String = match self
            .client
            .post(&self.path(&format!("/status/{call}")), form)
            .await
        {
            Ok(upid) => upid,
            Err(e) if e.api_message().contains(done_already) => {
                tracing::debug!(guest = %self.describe, action, "already done: {e}");
                return Ok(());
            }
            Err(e) => return Err(self.api_error(action, e)),
        };
        match follow(&self.client, &upid, limit).await {
            Ok(None) => Ok(()),
            Ok(Some(warnings)) => {
                tracing::info!(guest = %self.describe, action, %upid, "task ended with {warnings}");
                Ok(())
            }
            Err(TaskError::Failed(text)) if text.contains(done_already) => Ok(()),
            Err(e) => Err(self.task_error(action, e)),
        }
    }

    /// The guest's address from its live interfaces: not `lo`, IPv4 first, never link-local.
    async fn live_address(&self) -> Result<Option<IpAddr>, ProviderError> {
        let interfaces: Option<Vec<Interface>> =
            self.client
                .get(&self.path("/interfaces"))
                .await
                .map_err(|e| self.api_error("read the interfaces of", e))?;
        Ok(pick_address(&interfaces.unwrap_or_default()))
    }

    /// The static `ip=` of `net0` in the guest's configuration (`dhcp`, `manual`: none).
    async fn static_address(&self) -> Result<Option<IpAddr>, ProviderError> {
        let config: serde_json::Map<String, serde_json::Value> = self
            .client
            .get(&self.path("/config"))
            .await
            .map_err(|e| self.api_error("read the configuration of", e))?;
        Ok(config
            .get("net0")
            .and_then(serde_json::Value::as_str)
            .and_then(static_ip))
    }
}

/// `lxc/101 on pve1`, how events and logs name a guest.
pub(super) fn describe(node: &str, vmid: u32) -> String {
    format!("lxc/{vmid} on {node}")
}

/// The best address of `interfaces`: skip the `lo` interface and link-local addresses, prefer
/// IPv4.
fn pick_address(interfaces: &[Interface]) -> Option<IpAddr> {
    let usable = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_unspecified(),
        IpAddr::V6(v6) => !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80,
    };
    let parse = |cidr: &Option<String>| -> Option<IpAddr> {
        let text = cidr.as_deref()?;
        text.split('/').next()?.trim().parse().ok()
    };
    let mut v6 = None;
    for interface in interfaces.iter().filter(|i| i.name != "lo") {
        if let Some(ip) = parse(&interface.inet).filter(usable) {
            return Some(ip);
        }
        if v6.is_none() {
            v6 = parse(&interface.inet6).filter(usable);
        }
    }
    v6
}

/// The static address in a `net0` value such as `name=eth0,bridge=vmbr0,ip=10.0.0.5/24,type=veth`.
fn static_ip(net0: &str) -> Option<IpAddr> {
    let ip = |key: &str| {
        net0.split(',')
            .filter_map(|part| part.split_once('='))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.split('/').next()?.parse::<IpAddr>().ok())
    };
    ip("ip").or_else(|| ip("ip6"))
}

#[async_trait]
impl Provider for ProxmoxGuest {
    fn noun(&self) -> &'static str {
        "guest"
    }

    fn describe(&self) -> &str {
        &self.describe
    }

    async fn status(&self) -> Result<BackendStatus, ProviderError> {
        match self
            .client
            .get::<CurrentStatus>(&self.path("/status/current"))
            .await
        {
            Ok(current) => {
                self.locks.set(self.vmid, current.lock.as_deref());
                Ok(status_from(&current.status))
            }
            Err(e) if says_missing(e.api_message()) => Ok(BackendStatus::Missing),
            Err(e) => Err(self.api_error("read the status of", e)),
        }
    }

    async fn start(&self) -> Result<(), ProviderError> {
        if let Some(lock) = self.locks.of(self.vmid) {
            return Err(ProviderError::Api {
                action: "start",
                backend: self.describe.clone(),
                message: format!(
                    "the guest is locked ({lock}); not starting it while PVE holds the lock"
                ),
            });
        }
        self.power("start", "start", &[], START_LIMIT, "already running")
            .await
    }

    async fn stop(&self, _signal: Option<&str>, timeout: Duration) -> Result<(), ProviderError> {
        // PVE's shutdown has no signal: the guest's init decides. forceStop makes sure it is
        // down when the task ends.
        let form = [
            ("timeout", timeout.as_secs().max(1).to_string()),
            ("forceStop", "1".to_string()),
        ];
        self.power(
            "shut down",
            "shutdown",
            &form,
            timeout + STOP_MARGIN,
            "not running",
        )
        .await
    }

    async fn kill(&self, _signal: Option<&str>) -> Result<(), ProviderError> {
        self.power("stop", "stop", &[], KILL_LIMIT, "not running")
            .await
    }

    async fn pause(&self) -> Result<(), ProviderError> {
        if self.status().await? == BackendStatus::Missing {
            return Err(ProviderError::NotFound {
                backend: self.describe.clone(),
            });
        }
        Err(ProviderError::Api {
            action: "pause",
            backend: self.describe.clone(),
            message: "LXC suspend is an experimental CRIU checkpoint that leaves the guest stopped; use stop or kill".into(),
        })
    }

    async fn unpause(&self) -> Result<(), ProviderError> {
        // A guest frozen outside idlewatcher (`pct resume` thaws it).
        self.power("resume", "resume", &[], START_LIMIT, "not paused")
            .await
    }

    async fn address(&self) -> Result<IpAddr, ProviderError> {
        let started = Instant::now();
        let mut interval = ADDRESS_FIRST_INTERVAL;
        loop {
            if let Some(ip) = self.live_address().await? {
                return Ok(ip);
            }
            // No live address: a guest that is not running has none (its static address is
            // not served by anything).
            match self.status().await? {
                BackendStatus::Running => {}
                BackendStatus::Missing => {
                    return Err(ProviderError::NotFound {
                        backend: self.describe.clone(),
                    })
                }
                _ => {
                    return Err(ProviderError::NoAddress {
                        backend: self.describe.clone(),
                    })
                }
            }
            if let Some(ip) = self.static_address().await? {
                return Ok(ip);
            }
            // Running without an address yet (DHCP): still starting, not ready.
            if started.elapsed() >= ADDRESS_WAIT {
                return Err(ProviderError::NoAddress {
                    backend: self.describe.clone(),
                });
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interface(name: &str, inet: Option<&str>, inet6: Option<&str>) -> Interface {
        Interface {
            name: name.into(),
            inet: inet.map(Into::into),
            inet6: inet6.map(Into::into),
        }
    }

    #[test]
    fn the_address_skips_lo_and_link_local_and_prefers_ipv4() {
        let list = [
            interface("lo", Some("127.0.0.1/8"), Some("::1/128")),
            interface("eth0", None, Some("fe80::1/64")),
            interface("eth1", None, Some("2001:db8::5/64")),
            interface("eth2", Some("10.0.0.7/24"), None),
        ];
        assert_eq!(pick_address(&list), Some("10.0.0.7".parse().unwrap()));
        assert_eq!(
            pick_address(&list[..3]),
            Some("2001:db8::5".parse().unwrap())
        );
        assert_eq!(pick_address(&list[..2]), None);
        assert_eq!(
            pick_address(&[interface("eth0", Some("169.254.3.3/16"), None)]),
            None
        );
    }

    #[test]
    fn the_static_address_comes_from_net0() {
        assert_eq!(
            static_ip("name=eth0,bridge=vmbr0,hwaddr=AA:BB:CC:DD:EE:FF,ip=10.1.2.3/24,gw=10.1.2.1,type=veth"),
            Some("10.1.2.3".parse().unwrap())
        );
        assert_eq!(static_ip("name=eth0,bridge=vmbr0,ip=dhcp,type=veth"), None);
    }

    #[test]
    fn missing_guests_are_recognised_from_pve_text() {
        assert!(says_missing(
            "Configuration file 'nodes/pve1/lxc/999.conf' does not exist"
        ));
        assert!(!says_missing("CT 101 already running"));
    }
}
