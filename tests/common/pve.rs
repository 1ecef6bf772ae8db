//! A fake Proxmox VE API server, written from the PVE API reference (not from our client): what
//! the Proxmox provider is tested against, since no PVE cluster is available to the tests.
//!
//! Served over HTTPS with a certificate generated here (rcgen), on a free loopback port. What
//! it does, as PVE does:
//!
//! * `Authorization: PVEAPIToken=USER@REALM!NAME=SECRET`; a wrong token is answered `401
//!   authentication failure`, after a delay (PVE slows down failed logins).
//! * `POST /nodes/{node}/lxc/{vmid}/status/{start,shutdown,stop,resume}` answers a UPID at once
//!   (`UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{type}:{vmid}:{user}:`) and runs a
//!   task that takes [`FakePve::set_task_time`] and ends `OK`, `WARNINGS: 1` or an error text;
//!   the guest's status changes when the task ends. Refusals as PVE words them: `CT 101 already
//!   running`, `CT 101 not running`, `CT is locked (backup)`; a start of a vmid that does not
//!   exist returns a UPID whose task fails with `Configuration file '…' does not exist`.
//! * `GET /nodes/{node}/tasks/{upid}/status` (UPID percent-encoded): `running`, then `stopped`
//!   with `exitstatus`.
//! * `GET /nodes/{node}/lxc/{vmid}/status/current`, `/interfaces` (`null` while stopped),
//!   `/config` (`net0` with `ip=`), `GET /cluster/resources?type=vm` (optionally stale, as
//!   pvestatd's view is), `GET /version`.
//! * Errors as `{"data":null,"message":"…\n"}` with the text in the reason phrase too, and
//!   parameter errors as `400` with `{"errors":{param: text}, "message":"Parameter verification
//!   failed.\n"}`.
//! * Every request is counted by kind (`GET resources`, `POST start`, `GET task`…).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The token every fake accepts.
pub const TOKEN_ID: &str = "root@pam!idlewatcher";
/// Its secret.
pub const TOKEN_SECRET: &str = "5f3e2a9c-1111-4222-8333-944455556666";

/// One LXC guest of the fake cluster.
#[derive(Debug, Clone)]
pub struct Guest {
    /// The node it lives on.
    pub node: String,
    /// `running`, `stopped`.
    pub status: String,
    /// `backup`, `migrate`…
    pub lock: Option<String>,
    /// The address `interfaces` reports while it runs (`None`: no address yet, DHCP).
    pub live_ip: Option<String>,
    /// The `ip=` of `net0` in its config (`dhcp` or a CIDR).
    pub static_ip: String,
}

/// A task in progress or ended.
#[derive(Debug, Clone)]
struct Task {
    node: String,
    kind: String,
    vmid: u32,
    started: Instant,
    takes: Duration,
    exit: String,
    /// The guest status once the task ends successfully.
    effect: Option<String>,
    applied: bool,
    pstart: u32,
    starttime: u64,
}

/// Everything the fake knows.
#[derive(Debug)]
struct State {
    guests: HashMap<u32, Guest>,
    tasks: HashMap<String, Task>,
    task_time: Duration,
    /// Exit status of the next tasks of a kind (`vzstart`…), consumed one per task.
    exits: HashMap<String, Vec<String>>,
    counts: HashMap<String, usize>,
    /// Every power call: (kind, vmid, form body).
    power_calls: Vec<(String, u32, String)>,
    auth_delay: Duration,
    resources_staleness: Duration,
    resources_snapshot: Option<(Instant, Value)>,
    /// While set, every API call answers 503 (an outage).
    down: bool,
    pid: u32,
}

/// A running fake PVE API.
pub struct FakePve {
    state: Arc<Mutex<State>>,
    /// Where it listens.
    pub address: SocketAddr,
    /// The certificate it presents, PEM (for `ca_file`).
    pub cert_pem: String,
    /// The SHA-256 of the certificate's DER, as `AB:CD:…` (for `fingerprint`).
    pub fingerprint: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakePve {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn fingerprint_hex(der: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(der);
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl FakePve {
    /// Starts a fake with no guest, on a fresh self-signed certificate for `localhost` and
    /// `127.0.0.1`.
    pub async fn start() -> Self {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("a test certificate");
        let cert_der: CertificateDer<'static> = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let fingerprint = fingerprint_hex(cert_der.as_ref());
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key)
        .expect("a TLS server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let state = Arc::new(Mutex::new(State {
            guests: HashMap::new(),
            tasks: HashMap::new(),
            task_time: Duration::from_millis(300),
            exits: HashMap::new(),
            counts: HashMap::new(),
            power_calls: Vec::new(),
            auth_delay: Duration::from_millis(500),
            resources_staleness: Duration::ZERO,
            resources_snapshot: None,
            down: false,
            pid: 0x1000,
        }));
        let served = Arc::clone(&state);
        let server = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let state = Arc::clone(&served);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return; // A client that refused our certificate.
                    };
                    let service = hyper::service::service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(handle(state, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        FakePve {
            state,
            address,
            cert_pem: certified.cert.pem(),
            fingerprint,
            server,
        }
    }

    /// The `proxmox:` section for this fake as the library takes it: the right token, the
    /// certificate pinned by fingerprint, polling every `poll`.
    pub fn config(&self, poll: Duration) -> idlewatcher::config::ProxmoxConfig {
        use idlewatcher::config::{ProxmoxConfig, PveTrust, TokenSecret};
        let hex: String = self.fingerprint.chars().filter(|c| *c != ':').collect();
        let mut pin = [0u8; 32];
        for (i, byte) in pin.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
        }
        ProxmoxConfig {
            url: self.url(),
            token_id: TOKEN_ID.into(),
            token_secret: TokenSecret::Inline(TOKEN_SECRET.into()),
            trust: PveTrust::Fingerprint(pin),
            poll,
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.address.port())
    }

    /// Adds (or replaces) guest `vmid` on `node`, stopped, with `live_ip` reported by
    /// `interfaces` while it runs and a static `net0` address of `dhcp`.
    pub fn add_guest(&self, node: &str, vmid: u32, live_ip: Option<&str>) {
        self.state.lock().unwrap().guests.insert(
            vmid,
            Guest {
                node: node.into(),
                status: "stopped".into(),
                lock: None,
                live_ip: live_ip.map(Into::into),
                static_ip: "dhcp".into(),
            },
        );
    }

    /// Changes a guest directly (its status, lock, addresses).
    pub fn edit_guest(&self, vmid: u32, edit: impl FnOnce(&mut Guest)) {
        let mut state = self.state.lock().unwrap();
        edit(state.guests.get_mut(&vmid).expect("the guest exists"));
    }

    /// Deletes guest `vmid` (as `pct destroy` does).
    pub fn remove_guest(&self, vmid: u32) -> Option<Guest> {
        self.state.lock().unwrap().guests.remove(&vmid)
    }

    /// The guest's status now (tasks ended meanwhile applied).
    pub fn guest_status(&self, vmid: u32) -> Option<String> {
        let mut state = self.state.lock().unwrap();
        settle(&mut state);
        state.guests.get(&vmid).map(|g| g.status.clone())
    }

    /// How long each task runs.
    pub fn set_task_time(&self, takes: Duration) {
        self.state.lock().unwrap().task_time = takes;
    }

    /// The next task of `kind` (`vzstart`, `vzshutdown`, `vzstop`) ends with `exit`
    /// (`WARNINGS: 1`, an error text).
    pub fn next_exit(&self, kind: &str, exit: &str) {
        self.state
            .lock()
            .unwrap()
            .exits
            .entry(kind.into())
            .or_default()
            .push(exit.into());
    }

    /// `/cluster/resources` answers a snapshot at most this old (pvestatd's delay).
    pub fn set_resources_staleness(&self, staleness: Duration) {
        self.state.lock().unwrap().resources_staleness = staleness;
    }

    /// While `down`, every call answers 503.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// Requests of one kind so far (`GET resources`, `POST start`, `GET task`, `GET current`…).
    pub fn count(&self, kind: &str) -> usize {
        *self.state.lock().unwrap().counts.get(kind).unwrap_or(&0)
    }

    /// Every request so far, by kind.
    pub fn counts(&self) -> HashMap<String, usize> {
        self.state.lock().unwrap().counts.clone()
    }

    /// Every request so far.
    pub fn total(&self) -> usize {
        self.state.lock().unwrap().counts.values().sum()
    }

    /// The power calls that created a task so far: (task type, vmid, form body).
    pub fn power_calls(&self) -> Vec<(String, u32, String)> {
        self.state.lock().unwrap().power_calls.clone()
    }

    /// A client of this fake's API (trusting its certificate), for changes "behind the
    /// gateway's back" made through the API as a user would.
    pub fn api_client(&self) -> reqwest::Client {
        let mut roots = rustls::RootCertStore::empty();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(self.cert_pem.as_bytes())
            .expect("our certificate");
        roots.add(der).expect("a root");
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .build()
            .expect("a client")
    }

    /// `POST` a power call through the API with the right token, as `pct` would, and waits for
    /// its task to end.
    pub async fn power(&self, node: &str, vmid: u32, call: &str) {
        let url = format!(
            "{}/api2/json/nodes/{node}/lxc/{vmid}/status/{call}",
            self.url()
        );
        let response = self
            .api_client()
            .post(url)
            .header(
                "Authorization",
                format!("PVEAPIToken={TOKEN_ID}={TOKEN_SECRET}"),
            )
            .send()
            .await
            .expect("the fake answers");
        assert!(response.status().is_success(), "{call}: {response:?}");
        let takes = self.state.lock().unwrap().task_time;
        tokio::time::sleep(takes + Duration::from_millis(50)).await;
        self.guest_status(vmid);
    }
}

/// Applies the effects of the tasks that ended.
fn settle(state: &mut State) {
    let now = Instant::now();
    let State { tasks, guests, .. } = state;
    for task in tasks.values_mut() {
        if !task.applied && now >= task.started + task.takes {
            task.applied = true;
            if task.exit == "OK" || task.exit.starts_with("WARNINGS:") {
                if let (Some(effect), Some(guest)) = (&task.effect, guests.get_mut(&task.vmid)) {
                    guest.status = effect.clone();
                }
            }
        }
    }
}

type Answer = Response<Full<Bytes>>;

fn data(value: Value) -> Answer {
    Response::builder()
        .status(200)
        .header("content-type", "application/json;charset=UTF-8")
        .body(Full::new(Bytes::from(json!({ "data": value }).to_string())))
        .unwrap()
}

/// A PVE failure: the text in the reason phrase and in the body's `message`.
fn failure(code: u16, message: &str) -> Answer {
    let mut response = Response::builder()
        .status(code)
        .header("content-type", "application/json;charset=UTF-8")
        .body(Full::new(Bytes::from(
            json!({ "data": null, "message": format!("{message}\n") }).to_string(),
        )))
        .unwrap();
    if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(message.as_bytes().to_vec()) {
        response.extensions_mut().insert(reason);
    }
    response
}

/// PVE's parameter verification failure.
fn bad_parameters(errors: Value) -> Answer {
    let mut response = Response::builder()
        .status(StatusCode::BAD_REQUEST)
        .header("content-type", "application/json;charset=UTF-8")
        .body(Full::new(Bytes::from(
            json!({ "data": null, "errors": errors, "message": "Parameter verification failed.\n" })
                .to_string(),
        )))
        .unwrap();
    if let Ok(reason) =
        hyper::ext::ReasonPhrase::try_from(b"Parameter verification failed.".to_vec())
    {
        response.extensions_mut().insert(reason);
    }
    response
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn missing_conf(node: &str, vmid: u32) -> String {
    format!("Configuration file 'nodes/{node}/lxc/{vmid}.conf' does not exist")
}

fn resources(state: &State) -> Value {
    let mut list: Vec<Value> = state
        .guests
        .iter()
        .map(|(vmid, g)| {
            let mut entry = json!({
                "id": format!("lxc/{vmid}"), "type": "lxc", "vmid": vmid, "node": g.node,
                "status": g.status, "name": format!("ct{vmid}"), "template": 0,
                "maxmem": 536870912, "maxdisk": 8589934592u64, "uptime": 0,
            });
            if let Some(lock) = &g.lock {
                entry["lock"] = json!(lock);
            }
            entry
        })
        .collect();
    // A VM with a clashing id in another namespace would be a bug; a qemu VM is listed too.
    list.push(json!({"id": "qemu/90000", "type": "qemu", "vmid": 90000, "node": "pve1", "status": "running", "name": "vm"}));
    Value::Array(list)
}

async fn handle(state: Arc<Mutex<State>>, request: Request<hyper::body::Incoming>) -> Answer {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let auth = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    let parts: Vec<String> = path
        .trim_start_matches("/api2/json/")
        .split('/')
        .map(percent_decode)
        .collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let kind = match (method.as_str(), parts.as_slice()) {
        ("GET", ["version"]) => "GET version".to_string(),
        ("GET", ["cluster", "resources"]) => "GET resources".to_string(),
        ("GET", ["nodes", _, "tasks", _, "status"]) => "GET task".to_string(),
        ("GET", ["nodes", _, "lxc", _, "status", "current"]) => "GET current".to_string(),
        ("GET", ["nodes", _, "lxc", _, tail]) => format!("GET {tail}"),
        ("POST", ["nodes", _, "lxc", _, "status", call]) => format!("POST {call}"),
        (m, _) => format!("{m} other"),
    };
    let delay = {
        let mut s = state.lock().unwrap();
        *s.counts.entry(kind.clone()).or_default() += 1;
        (auth != format!("PVEAPIToken={TOKEN_ID}={TOKEN_SECRET}")).then_some(s.auth_delay)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
        let mut response = Response::builder()
            .status(401)
            .body(Full::new(Bytes::from_static(b"")))
            .unwrap();
        if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(b"authentication failure".to_vec()) {
            response.extensions_mut().insert(reason);
        }
        return response;
    }
    let mut s = state.lock().unwrap();
    if s.down {
        return failure(503, "service unavailable");
    }
    settle(&mut s);
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["version"]) => {
            data(json!({"version": "8.2.4", "release": "8.2", "repoid": "faa83925c9641325"}))
        }
        ("GET", ["cluster", "resources"]) => {
            if !query.split('&').any(|p| p == "type=vm") {
                return bad_parameters(json!({"type": "this fake only knows type=vm"}));
            }
            let now = Instant::now();
            let staleness = s.resources_staleness;
            if let Some((at, snapshot)) = &s.resources_snapshot {
                if now.duration_since(*at) < staleness {
                    return data(snapshot.clone());
                }
            }
            let fresh = resources(&s);
            s.resources_snapshot = Some((now, fresh.clone()));
            data(fresh)
        }
        ("GET", ["nodes", node, "tasks", upid, "status"]) => match s.tasks.get(*upid) {
            Some(task) if task.node == *node => {
                let done = Instant::now() >= task.started + task.takes;
                let mut answer = json!({
                    "upid": upid, "node": node, "type": task.kind, "id": task.vmid.to_string(),
                    "user": TOKEN_ID.split('!').next(), "tokenid": TOKEN_ID.split('!').nth(1),
                    "pid": 0, "pstart": task.pstart, "starttime": task.starttime,
                    "status": if done { "stopped" } else { "running" },
                });
                if done {
                    answer["exitstatus"] = json!(task.exit);
                }
                data(answer)
            }
            _ => failure(500, &format!("no such task '{upid}'")),
        },
        ("GET", ["nodes", node, "lxc", vmid, rest @ ..]) => {
            let Ok(vmid) = vmid.parse::<u32>() else {
                return bad_parameters(json!({"vmid": "type check ('integer') failed"}));
            };
            let Some(guest) = s.guests.get(&vmid).filter(|g| g.node == *node).cloned() else {
                return failure(500, &missing_conf(node, vmid));
            };
            match rest {
                ["status", "current"] => {
                    let mut answer = json!({"vmid": vmid, "status": guest.status, "name": format!("ct{vmid}"), "type": "lxc", "uptime": 0});
                    if let Some(lock) = &guest.lock {
                        answer["lock"] = json!(lock);
                    }
                    data(answer)
                }
                ["interfaces"] => {
                    if guest.status != "running" {
                        return data(Value::Null);
                    }
                    let mut list = vec![
                        json!({"name": "lo", "hwaddr": "00:00:00:00:00:00", "inet": "127.0.0.1/8", "inet6": "::1/128"}),
                    ];
                    let mut eth0 = json!({"name": "eth0", "hwaddr": "BC:24:11:00:00:01", "inet6": "fe80::be24:11ff:fe00:1/64"});
                    if let Some(ip) = &guest.live_ip {
                        eth0["inet"] = json!(format!("{ip}/24"));
                    }
                    list.push(eth0);
                    data(Value::Array(list))
                }
                ["config"] => data(json!({
                    "hostname": format!("ct{vmid}"), "arch": "amd64", "memory": 512, "ostype": "debian",
                    "net0": format!("name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:01,ip={},type=veth", guest.static_ip),
                    "digest": "0123456789abcdef",
                })),
                _ => failure(
                    501,
                    &format!("Method 'GET /{}' not implemented", parts.join("/")),
                ),
            }
        }
        ("POST", ["nodes", node, "lxc", vmid, "status", call]) => {
            let Ok(vmid) = vmid.parse::<u32>() else {
                return bad_parameters(json!({"vmid": "type check ('integer') failed"}));
            };
            let params = form(&body);
            let allowed: &[&str] = match *call {
                "start" => &["debug", "skiplock"],
                "shutdown" => &["forceStop", "timeout"],
                "stop" => &["overrule-shutdown", "skiplock"],
                "resume" | "suspend" => &[],
                _ => {
                    return failure(
                        501,
                        &format!("Method 'POST /{}' not implemented", parts.join("/")),
                    )
                }
            };
            let unknown: serde_json::Map<String, Value> = params
                .keys()
                .filter(|k| !allowed.contains(&k.as_str()))
                .map(|k| (k.clone(), json!("property is not defined in schema and the schema does not allow additional properties")))
                .collect();
            if !unknown.is_empty() {
                return bad_parameters(Value::Object(unknown));
            }
            let kind = format!("vz{call}");
            let guest = s.guests.get(&vmid).filter(|g| g.node == *node).cloned();
            let (exit, effect) = match (&guest, *call) {
                // A start of a missing guest: the task is created, then fails.
                (None, "start") => (missing_conf(node, vmid), None),
                (None, _) => return failure(500, &missing_conf(node, vmid)),
                (Some(g), "start") if g.status == "running" => {
                    return failure(500, &format!("CT {vmid} already running"))
                }
                (Some(g), "shutdown" | "stop") if g.status != "running" => {
                    return failure(500, &format!("CT {vmid} not running"))
                }
                (Some(g), _) if g.lock.is_some() && *call != "stop" => {
                    return failure(
                        500,
                        &format!("CT is locked ({})", g.lock.clone().unwrap_or_default()),
                    )
                }
                (Some(_), "start" | "resume") => ("OK".to_string(), Some("running".to_string())),
                (Some(_), _) => ("OK".to_string(), Some("stopped".to_string())),
            };
            let exit = match s.exits.get_mut(&kind).filter(|list| !list.is_empty()) {
                Some(list) => list.remove(0),
                None => exit,
            };
            // A task is created: the call is recorded (refusals above made none).
            s.power_calls.push((kind.clone(), vmid, body.clone()));
            s.pid += 1;
            let starttime = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let pstart = (starttime as u32) & 0x00ff_ffff;
            let upid = format!(
                "UPID:{node}:{:08X}:{pstart:08X}:{starttime:08X}:{kind}:{vmid}:{TOKEN_ID}:",
                s.pid
            );
            let takes = s.task_time;
            s.tasks.insert(
                upid.clone(),
                Task {
                    node: node.to_string(),
                    kind,
                    vmid,
                    started: Instant::now(),
                    takes,
                    exit,
                    effect,
                    applied: false,
                    pstart,
                    starttime,
                },
            );
            data(json!(upid))
        }
        _ => failure(
            501,
            &format!("Method '{method} /{}' not implemented", parts.join("/")),
        ),
    }
}
