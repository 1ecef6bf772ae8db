//! The test image: `FROM scratch` plus Debian's statically linked busybox, a web server, a few
//! CGIs and an upgrade echo server. Built locally (no registry), once per process, tagged by a
//! hash of its content so concurrent builds by several test binaries agree and runs reuse it.
//!
//! ```ignore
//! let tag = common::image::ensure_test_image().await; // "idlewatcher-test:0123abcd…"
//! ```

use std::path::Path;
use std::process::Stdio;

use tokio::sync::OnceCell;

use super::engine::{cli_output, try_docker};

/// The body of `/` (`/www/index.html`) served by the image's default command.
pub const INDEX_BODY: &str = "idlewatcher test backend: hello\n";

/// The port the test image's web server listens on (`PORT` in the environment changes it).
pub const HTTP_PORT: u16 = 80;

/// Where the static busybox comes from (Debian's `busybox-static`); override with the
/// `IDLEWATCHER_TEST_BUSYBOX` environment variable.
pub const BUSYBOX_PATH: &str = "/bin/busybox";

/// Repository of the test image; the tag is a hash of its content.
pub const TEST_IMAGE_REPO: &str = "idlewatcher-test";

/// Busybox applets linked into the image's `/bin`.
const APPLETS: &[&str] = &[
    "sh", "httpd", "sleep", "cat", "head", "md5sum", "wc", "nc", "echo", "env", "kill", "printf",
    "rm", "ls", "ps", "true", "false", "wget", "date", "tee", "touch", "mkdir", "grep", "test",
];

/// `/bin/serve`, the image's default command: busybox httpd in the foreground, exiting at once on
/// SIGTERM/SIGINT (a bare httpd as PID 1 would ignore SIGTERM: stop would take the full timeout).
const SERVE_SCRIPT: &str = r#"#!/bin/sh
# idlewatcher test backend: busybox httpd on $PORT (default 80), document root /www.
trap 'exit 0' TERM INT
httpd -f -p "${PORT:-80}" -h /www &
# An upgrade (WebSocket-like) echo server on $UPGRADE_PORT (default 81), see /bin/upgrade-session.
nc -ll -p "${UPGRADE_PORT:-81}" -e /bin/upgrade-session &
wait
"#;

/// `/bin/upgrade-session`: one upgraded connection. Reads the request head, answers
/// `101 Switching Protocols`, then echoes every byte back until the client closes.
const UPGRADE_SESSION: &str = r#"#!/bin/sh
while read -r line; do
    case "$line" in ""|"$(printf '\r')") break ;; esac
done
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n'
exec cat
"#;

/// `/www/cgi-bin/stream`: a slow streamed response, one line every 0.5 s for 5 s.
const STREAM_CGI: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
i=0
while [ "$i" -lt 10 ]; do
    echo "line $i"
    sleep 0.5
    i=$((i + 1))
done
"#;

/// `/www/cgi-bin/sum`: reads exactly $CONTENT_LENGTH bytes of the request body and answers
/// `<md5> <length>`, so a test can check that a large body arrived intact.
const SUM_CGI: &str = r#"#!/bin/sh
len="${CONTENT_LENGTH:-0}"
f="/tmp/body.$$"
head -c "$len" > "$f"
sum="$(md5sum < "$f")"
n="$(wc -c < "$f")"
rm -f "$f"
printf 'Content-Type: text/plain\r\n\r\n%s %s\n' "${sum%% *}" "$n"
"#;

const DOCKERFILE: &str = r#"FROM scratch
COPY rootfs/ /
EXPOSE 80
CMD ["/bin/serve"]
"#;

/// Files of the image besides busybox: (path in the image, content, mode).
fn image_files() -> Vec<(&'static str, &'static str, u32)> {
    vec![
        ("bin/serve", SERVE_SCRIPT, 0o755),
        ("www/index.html", INDEX_BODY, 0o644),
        ("www/cgi-bin/sum", SUM_CGI, 0o755),
        ("www/cgi-bin/stream", STREAM_CGI, 0o755),
        ("bin/upgrade-session", UPGRADE_SESSION, 0o755),
    ]
}

/// Builds the test image (once per process) and returns its tag.
///
/// `FROM scratch` + the static busybox, applet links (`sh`, `httpd`, `sleep`, `cat`, `head`,
/// `md5sum`, `wc`, `nc`, `echo`, `env`, `kill`…), `/www/index.html` ([`INDEX_BODY`]), the CGIs
/// `/www/cgi-bin/sum` and `/www/cgi-bin/stream`, and the default command `/bin/serve` (httpd on
/// port 80, the upgrade echo server on 81). The tag is a hash of all that, so concurrent builds
/// by several test processes produce the same image and are harmless, and an existing image is
/// reused across runs.
pub async fn ensure_test_image() -> &'static str {
    static IMAGE: OnceCell<String> = OnceCell::const_new();
    IMAGE.get_or_init(build_test_image).await
}

async fn build_test_image() -> String {
    // Reading busybox and writing the build context is file work: off the runtime's threads.
    let (busybox_path, busybox) = tokio::task::spawn_blocking(read_busybox)
        .await
        .unwrap_or_else(|e| panic!("reading busybox panicked: {e}"));
    let tag = format!("{TEST_IMAGE_REPO}:{:016x}", content_hash(&busybox));
    if try_docker(&["image", "inspect", "--format", "{{.Id}}", &tag])
        .await
        .is_ok()
    {
        return tag;
    }
    let dir = tokio::task::spawn_blocking(move || write_context(&busybox))
        .await
        .unwrap_or_else(|e| panic!("writing the build context panicked: {e}"));
    let context = dir.path().to_str().expect("utf-8 temp path");
    let has_buildx = try_docker(&["buildx", "version"]).await.is_ok();
    let first = docker_build(&tag, context, !has_buildx).await;
    let result = match first {
        Ok(_) => Ok(()),
        Err(first) => docker_build(&tag, context, has_buildx)
            .await
            .map(|_| ())
            .map_err(|_| first),
    };
    if let Err(e) = result {
        panic!("building the test image from {busybox_path} failed: {e}");
    }
    tag
}

/// `docker build -q -t TAG CONTEXT`, with the classic builder when `legacy` (it needs no buildx
/// plugin and no registry for `FROM scratch`).
async fn docker_build(tag: &str, context: &str, legacy: bool) -> super::engine::CliResult {
    let mut command = tokio::process::Command::new("docker");
    command
        .args(["build", "-q", "-t", tag, context])
        .stdin(Stdio::null());
    if legacy {
        command.env("DOCKER_BUILDKIT", "0");
    }
    cli_output(&["build", "-t", tag, context], command.output().await)
}

/// The image's content hash: busybox, the Dockerfile, every file and applet.
fn content_hash(busybox: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    fnv1a(&mut hash, busybox);
    fnv1a(&mut hash, DOCKERFILE.as_bytes());
    for (path, content, mode) in image_files() {
        fnv1a(&mut hash, path.as_bytes());
        fnv1a(&mut hash, content.as_bytes());
        fnv1a(&mut hash, &mode.to_le_bytes());
    }
    for applet in APPLETS {
        fnv1a(&mut hash, applet.as_bytes());
    }
    hash
}

/// A temporary directory holding the `Dockerfile` and the `rootfs/` it copies.
fn write_context(busybox: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary build directory");
    let root = dir.path().join("rootfs");
    let write = |rel: &str, content: &[u8], mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        std::fs::write(&path, content).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    write("bin/busybox", busybox, 0o755);
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
            .unwrap_or_else(|e| panic!("symlink {applet}: {e}"));
    }
    for (path, content, mode) in image_files() {
        write(path, content.as_bytes(), mode);
    }
    std::fs::create_dir_all(root.join("tmp")).expect("mkdir tmp");
    std::fs::write(dir.path().join("Dockerfile"), DOCKERFILE).expect("write Dockerfile");
    dir
}

/// FNV-1a, 64 bits: a stable content hash for the image tag (std's hasher may change).
fn fnv1a(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x100_0000_01b3);
    }
}

/// Whether an ELF executable is statically linked (has no `PT_INTERP` program header).
fn is_static_elf(bin: &[u8]) -> Result<bool, String> {
    if bin.len() < 64 || &bin[..4] != b"\x7fELF" {
        return Err("not an ELF executable".into());
    }
    let class64 = bin[4] == 2;
    let little = bin[5] == 1;
    let rd = |off: usize, len: usize| -> Result<u64, String> {
        let b = bin.get(off..off + len).ok_or("truncated ELF header")?;
        let mut v = 0u64;
        for i in 0..len {
            let byte = if little { b[len - 1 - i] } else { b[i] };
            v = (v << 8) | u64::from(byte);
        }
        Ok(v)
    };
    let (phoff, phentsize, phnum) = if class64 {
        (rd(0x20, 8)?, rd(0x36, 2)?, rd(0x38, 2)?)
    } else {
        (rd(0x1c, 4)?, rd(0x2a, 2)?, rd(0x2c, 2)?)
    };
    for i in 0..phnum {
        let at = usize::try_from(phoff + i * phentsize).map_err(|e| e.to_string())?;
        if rd(at, 4)? == 3 {
            return Ok(false); // PT_INTERP: needs a dynamic loader
        }
    }
    Ok(true)
}

/// The static busybox (path, bytes); panics with installation advice when it is missing or
/// dynamically linked.
fn read_busybox() -> (String, Vec<u8>) {
    let path = std::env::var("IDLEWATCHER_TEST_BUSYBOX").unwrap_or_else(|_| BUSYBOX_PATH.into());
    let advice = "the Docker tests need Debian's statically linked busybox: \
                  `apt-get install busybox-static` (or point IDLEWATCHER_TEST_BUSYBOX at one)";
    let bin = std::fs::read(Path::new(&path))
        .unwrap_or_else(|e| panic!("cannot read {path}: {e}; {advice}"));
    match is_static_elf(&bin) {
        Ok(true) => (path, bin),
        Ok(false) => panic!("{path} is dynamically linked; {advice}"),
        Err(e) => panic!("{path}: {e}; {advice}"),
    }
}
