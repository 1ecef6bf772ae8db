//! The `idlewatcher` gateway: `idlewatcher -c conf/idlewatcher.yaml` (`-t` to validate only).

use std::process::ExitCode;
use std::sync::Arc;

use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use tracing_subscriber::EnvFilter;

use idlewatcher::http::{tls, IdleProxy};
use idlewatcher::{config, listen, IdleWatcher};

/// The configuration used when `-c` is not given.
const DEFAULT_CONFIG: &str = "conf/idlewatcher.yaml";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    raise_open_file_limit();
    let mut opt = Opt::parse_args();
    let path = opt
        .conf
        .clone()
        .unwrap_or_else(|| DEFAULT_CONFIG.to_string());
    // Parsed on a thread of its own: glibc gives it its own arena, so the YAML tree is freed
    // in one piece instead of leaving holes between the routes' long-lived state.
    let loaded = std::thread::scope(|scope| {
        scope
            .spawn(|| config::load(std::path::Path::new(&path)))
            .join()
    });
    let Ok(loaded) = loaded else {
        eprintln!("{path}: reading the configuration failed");
        return ExitCode::FAILURE;
    };
    let config = match loaded {
        Ok(config) => match idlewatcher::check(&config.gateway) {
            errors if errors.is_empty() => config,
            errors => return report(&path, &errors),
        },
        Err(errors) => return report(&path, &errors.0),
    };
    // Copied out of the parsing thread's arena (the copy is kept for reloads): that arena is
    // then freed whole, rather than kept for the copy's sake around the YAML tree's holes.
    let config = {
        let parsed = config;
        parsed.clone()
    };
    if opt.test {
        println!(
            "{path}: configuration is valid ({} route(s))",
            config.gateway.routes.len()
        );
        return ExitCode::SUCCESS;
    }

    let mut server_conf = match ServerConf::from_yaml(&config.server_yaml) {
        Ok(conf) => conf,
        Err(error) => {
            eprintln!("{path}: {error}");
            return ExitCode::FAILURE;
        }
    };
    // An address in use is an error now, not Pingora's endless retry (unless taking over the
    // sockets of a running instance, which holds them by design).
    if !opt.upgrade {
        let gateway = &config.gateway;
        let mut addresses: Vec<(listen::Transport, String)> = gateway
            .listen
            .iter()
            .chain(gateway.tls.iter().flat_map(|tls| &tls.listen))
            .chain(gateway.admin.as_ref().map(|admin| &admin.listen))
            .map(|address| (listen::Transport::Tcp, address.clone()))
            .collect();
        for (protocol, address) in gateway.stream_listen_addresses() {
            let transport = match protocol {
                config::StreamProtocol::Tcp => listen::Transport::Tcp,
                config::StreamProtocol::Udp => listen::Transport::Udp,
            };
            addresses.push((transport, address.to_string()));
        }
        let in_use = listen::check_free(
            addresses
                .iter()
                .map(|(transport, address)| (*transport, address.as_str())),
        );
        if !in_use.is_empty() {
            for error in &in_use {
                eprintln!("idlewatcher: {error}");
            }
            return ExitCode::FAILURE;
        }
    }
    opt.conf = None; // Already read: Pingora must not parse our file again.
    server_conf.merge_with_opt(&opt);

    // Daemonize (-d) or take over the listeners of a running instance (-u) first: the Docker
    // connection and its threads must belong to the process that serves.
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();

    // Connecting to the Docker engine needs a runtime; Pingora brings its own later.
    let idle = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| {
            runtime
                .block_on(async {
                    // From here on a SIGHUP never kills the process (its default action), even
                    // before the reload service listens: tokio's handler stays installed.
                    if let Err(error) =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                    {
                        tracing::warn!(%error, "cannot handle SIGHUP");
                    }
                    IdleWatcher::from_config(&config.gateway).await
                })
                .map_err(|e| e.to_string())
        }) {
        Ok(idle) => Arc::new(idle),
        Err(error) => {
            eprintln!("idlewatcher: {error}");
            return ExitCode::FAILURE;
        }
    };

    let listen = config.gateway.listen.clone();
    let tls_config = config.gateway.tls.clone();
    let admin = config
        .gateway
        .admin
        .as_ref()
        .map(|admin| admin.listen.clone());
    // SIGHUP and POST /api/reload read this file again. The configuration in force is kept
    // there for the next reload to compare with: handed over, not copied.
    idle.enable_reload(std::path::PathBuf::from(&path), config);
    let mut proxy =
        IdleProxy::service(Arc::clone(idle.idle_gate()), &server.configuration, &listen);
    // HTTPS: the same service (early hold, gate, proxy) behind TLS listeners. The files were
    // checked by the configuration; read again here, they may have changed since.
    if let Some(tls_config) = &tls_config {
        let certificates = match tls::Certificates::load(tls_config) {
            Ok(certificates) => certificates,
            Err(error) => {
                eprintln!("idlewatcher: {error}");
                return ExitCode::FAILURE;
            }
        };
        idle.serve_certificates(Arc::clone(&certificates));
        for address in &tls_config.listen {
            match tls::listener(address, &certificates) {
                Ok(listener) => proxy.add_listener(listener),
                Err(error) => {
                    eprintln!("idlewatcher: cannot listen for HTTPS on {address}: {error}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    server.add_service(proxy);
    for service in idle.background_services() {
        server.add_boxed_service(service);
    }
    tracing::info!(
        routes = idle.routes().load().len(),
        ?listen,
        tls = ?tls_config.as_ref().map(|tls| &tls.listen),
        admin = admin.as_deref().unwrap_or("off"),
        "idlewatcher started"
    );
    release_start_up_memory();
    server.run_forever()
}

/// Lists every configuration error (each names its route, key and line) and fails.
fn report(path: &str, errors: &[config::ConfigError]) -> ExitCode {
    eprintln!("{path}: {} error(s):", errors.len());
    for error in errors {
        eprintln!("  {error}");
    }
    ExitCode::FAILURE
}

/// Hands the memory start-up used and freed (the YAML tree, assembly's indexes) back
/// to the system: glibc keeps freed memory below live allocations otherwise, and a gateway with
/// 100,000 routes would keep twice the memory it uses.
fn release_start_up_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Raises the soft limit on open files to the hard limit: every held request and every event
/// subscriber is a socket, and 1024 (a common soft default) is far too few for a gateway.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!("could not raise the open file limit");
            }
        }
    }
}
