# runc-etcd: one image for the operator (runs as non-root) and the host agents (run as root,
# privileged, by the DaemonSets the operator makes; the agent installs this image's runc on its
# host as /opt/runc-etcd/bin/runc and drives the host's systemd with systemctl).
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
# the product only: no test harness, no failpoints
RUN cargo build --release --locked --bin runc-etcd -p runc-etcd \
 && strip target/release/runc-etcd

FROM debian:bookworm-slim
# runc (at /usr/sbin/runc) for the hosts; systemctl (package systemd) for the agent;
# CA certificates for registries and S3 endpoints.
RUN apt-get update \
 && apt-get install -y --no-install-recommends runc systemd ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/runc-etcd /usr/local/bin/runc-etcd
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/runc-etcd"]
