# The idlewatcher gateway as an image: built with Rust on Debian, run from distroless (the binary
# links glibc; nothing else is in the image). Build and run:
#   docker build -t idlewatcher .
#   docker run -d --name idlewatcher -p 8080:8080 \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     -v "$PWD/conf/idlewatcher.yaml:/etc/idlewatcher/idlewatcher.yaml:ro" idlewatcher
# The Docker socket gives the gateway control of the engine (it starts and stops containers):
# mount it only into this container. The gateway reaches the backends by their container
# addresses, so run it on the same Docker network as them (or use `upstream:` per route).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The shipped build (as `make run`): fat LTO, glibc's allocator, chosen by `make bench` (BENCHMARKS.md).
RUN cargo build --profile dist --bin idlewatcher

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/dist/idlewatcher /usr/local/bin/idlewatcher
COPY conf/idlewatcher.yaml /etc/idlewatcher/idlewatcher.yaml
EXPOSE 8080
# Root to reach the mounted Docker socket (its group id differs per host); use --user with the
# host's docker group id (`--user 65532:$(getent group docker | cut -d: -f3)`) to drop it.
USER 0
ENTRYPOINT ["/usr/local/bin/idlewatcher"]
CMD ["-c", "/etc/idlewatcher/idlewatcher.yaml"]
