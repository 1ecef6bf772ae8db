#!/bin/sh
# Builds the demo image `idlewatcher-demo:latest` with no registry: FROM scratch plus Debian's
# static busybox (busybox httpd serving a page). Usage: scripts/build-demo-image.sh
set -eu
busybox=/bin/busybox
if ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
    echo "need a static busybox at $busybox: apt-get install busybox-static" >&2
    exit 1
fi
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/bin" "$context/www"
cp "$busybox" "$context/bin/busybox"
for applet in sh httpd sleep; do ln -s busybox "$context/bin/$applet"; done
cat > "$context/www/index.html" <<'HTML'
<!doctype html><html lang="en"><head><meta charset="utf-8"><title>idlewatcher demo</title></head>
<body><h1>Hello from a container that was asleep</h1>
<p>idlewatcher woke it for you. Leave it alone for 30 s and it goes back to sleep.</p></body></html>
HTML
cat > "$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY bin /bin
COPY www /www
EXPOSE 80
CMD ["/bin/httpd", "-f", "-p", "80", "-h", "/www"]
DOCKERFILE
DOCKER_BUILDKIT=0 docker build -q -t idlewatcher-demo:latest "$context" >/dev/null
echo "built image idlewatcher-demo:latest"
