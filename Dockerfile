# syntax=docker/dockerfile:1
#
# otel-anomaly container image: the release binary on distroless cc (glibc, CA
# certificates, no shell), running as the distroless `nonroot` user (65532).
#
#   docker build -t otel-anomaly:0.1.0 .
#   docker run --rm -p 4317:4317 -p 4318:4318 -p 8888:8888 otel-anomaly:0.1.0 sidecar
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds; the binary is copied out
# of the cached target directory before the mount goes away.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin otel-anomaly \
 && install -D -m 0755 target/release/otel-anomaly /out/otel-anomaly

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/otel-anomaly /usr/local/bin/otel-anomaly
# Numeric form of `nonroot` (65532:65532), so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# The user's home is writable: the default data_dir (otel-anomaly-data) lands there.
# In Kubernetes the chart mounts data_dir and the root filesystem is read-only.
WORKDIR /home/nonroot
# Sidecar: OTLP/gRPC, OTLP/HTTP, admin (/metrics, /healthz, /readyz).
# Aggregator (`aggregator --config FILE`): push API (gRPC), HTTP API and dashboard.
EXPOSE 4317 4318 8888 4320 8080
ENTRYPOINT ["/usr/local/bin/otel-anomaly"]
CMD ["sidecar"]
