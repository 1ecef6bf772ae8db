#!/bin/sh
# The demo backend `make run` fronts: the container `idlewatcher-demo` (busybox httpd), created
# stopped when it is missing, from the image built by scripts/build-demo-image.sh (no registry).
# Usage: scripts/demo-backend.sh
set -eu
cd "$(dirname "$0")/.."
if ! docker image inspect idlewatcher-demo:latest >/dev/null 2>&1; then
    scripts/build-demo-image.sh
fi
if ! docker container inspect idlewatcher-demo >/dev/null 2>&1; then
    docker create --name idlewatcher-demo --label idlewatcher-demo=1 idlewatcher-demo:latest >/dev/null
    echo "created the stopped container idlewatcher-demo"
fi
