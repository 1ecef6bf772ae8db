//! A private Podman engine: Debian's Podman (4.3) `system service` on a unix socket of its own,
//! run as root with its own `containers.conf`, storage and run directories under a temporary
//! directory (nothing shared with a Podman the machine may run), removed when dropped.
//!
//! ```ignore
//! let podman = Podman::start().await;           // podman.host = "unix:///tmp/…/podman.sock"
//! podman.load_image(common::image::ensure_test_image().await).await;
//! podman.cli(&["create", "--name", "web", image]).await;
//! ```

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// Podman's settings for a root service inside a container-less VM: cgroupfs (no systemd), file
/// events (no journald), limits a nested runtime accepts.
const CONTAINERS_CONF: &str = r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
"#;

/// A running `podman system service`, removed with all its containers and storage on drop.
pub struct Podman {
    /// `unix:///…/podman.sock`: the engine's address, as the gateway's `docker.host`.
    pub host: String,
    dir: tempfile::TempDir,
    service: Child,
}

impl Podman {
    /// Starts the service and waits until its socket answers. Panics when `podman` is not
    /// installed (`make test` installs it) or the service does not come up.
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("iwt-podman-")
            .tempdir()
            .expect("a temporary directory");
        std::fs::write(dir.path().join("containers.conf"), CONTAINERS_CONF)
            .expect("containers.conf");
        let socket = dir.path().join("podman.sock");
        let host = format!("unix://{}", socket.display());
        let log = std::fs::File::create(dir.path().join("service.log")).expect("service log");
        let service = Self::command_in(dir.path().to_path_buf())
            .args(["system", "service", "--time", "0", &host])
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "podman does not run ({e}): `make test` installs it (apt-get install podman)"
                )
            });
        let podman = Self { host, dir, service };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::UnixStream::connect(&socket).await.is_ok() {
                return podman;
            }
            assert!(
                Instant::now() < deadline,
                "podman system service never listened:\n{}",
                std::fs::read_to_string(podman.dir.path().join("service.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `podman` with this engine's configuration, storage and run directories.
    fn command_in(dir: PathBuf) -> Command {
        let mut command = Command::new("podman");
        command
            .env("CONTAINERS_CONF", dir.join("containers.conf"))
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--runroot")
            .arg(dir.join("run"))
            .args(["--storage-driver", "vfs"]);
        command
    }

    /// Runs `podman ARGS…` on this engine; panics on failure. Returns stdout, trimmed.
    pub async fn cli(&self, args: &[&str]) -> String {
        let output = Self::command_in(self.dir.path().to_path_buf())
            .args(args)
            .output()
            .await
            .expect("podman runs");
        assert!(
            output.status.success(),
            "podman {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Copies `image` from the Docker engine (`docker save | podman load`).
    pub async fn load_image(&self, image: &str) {
        let archive = self.dir.path().join("image.tar");
        let archive_arg = archive.display().to_string();
        super::engine::docker(&["save", "-o", &archive_arg, image]).await;
        self.cli(&["load", "-i", &archive_arg]).await;
        let _ = std::fs::remove_file(&archive);
    }

    /// The container's state (`created`, `running`, `exited`…), or `None` when it does not
    /// exist.
    pub async fn state(&self, name: &str) -> Option<String> {
        let output = Self::command_in(self.dir.path().to_path_buf())
            .args(["inspect", "--format", "{{.State.Status}}", name])
            .output()
            .await
            .expect("podman runs");
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.service.start_kill();
        // Its containers' processes (conmon) outlive the service: remove them, then the storage.
        let dir = self.dir.path();
        let _ = std::process::Command::new("podman")
            .env("CONTAINERS_CONF", dir.join("containers.conf"))
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--runroot")
            .arg(dir.join("run"))
            .args(["--storage-driver", "vfs", "rm", "-a", "-f", "-t", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
