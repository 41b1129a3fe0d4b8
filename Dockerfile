# syntax=docker/dockerfile:1
#
# xray-daemon container image: a static-ish Rust binary on distroless (glibc, CA certificates,
# no shell), running as uid/gid 10001 like the upstream AWS X-Ray daemon image.
#
# Build (BuildKit; one platform or both):
#   docker buildx build -t xray-daemon:dev .
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/xray-daemon:TAG --push .
#
# Multi-arch without emulation: the build stage always runs on the builder's own platform
# ($BUILDPLATFORM) and cross-compiles for $TARGETARCH with Debian's cross gcc (needed for the
# C parts of the TLS stack, aws-lc-sys) as linker and C compiler. Only the final stage is per
# target platform, and it runs no commands, so no QEMU is needed for either architecture.
#
# Run: the entrypoint binds UDP and TCP on 0.0.0.0:2000 and the admin server on 0.0.0.0:2100.
# Arguments given to `docker run` / Kubernetes `args` are appended to it, e.g.
#   docker run --rm -p 2000:2000/udp -p 2000:2000 -p 2100:2100 xray-daemon:dev -o -n us-east-1
# The root filesystem can be mounted read-only: the daemon writes nothing unless told to
# (-f log file, --local-sink file), and then only where a volume is mounted.

# Rust 1.94.1 or newer: the floor set by the AWS SDK crates in Cargo.lock.
# DEBIAN_RELEASE and the distroless tag of the final stage must name the same Debian release
# (bookworm = debian12), so that the binary links against the glibc it runs with.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ----------------------------------------------------------------------------- build stage
FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
ARG TARGETARCH
ARG BUILDARCH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Rust target for $TARGETARCH and, when it differs from the builder's architecture, Debian's
# cross gcc as linker and C compiler (aws-lc-sys has C code). The cross packages are not
# version-pinned: Debian drops superseded versions from its mirrors, so a pin would break the
# build at the next point release, and the toolchain never reaches the final image.
# hadolint ignore=DL3008
RUN case "${TARGETARCH}" in \
      amd64) triple=x86_64-unknown-linux-gnu; gnu=x86_64-linux-gnu; \
             cross_gcc=gcc-x86-64-linux-gnu; cross_libc=libc6-dev-amd64-cross ;; \
      arm64) triple=aarch64-unknown-linux-gnu; gnu=aarch64-linux-gnu; \
             cross_gcc=gcc-aarch64-linux-gnu; cross_libc=libc6-dev-arm64-cross ;; \
      *) echo "unsupported TARGETARCH '${TARGETARCH}' (amd64 or arm64)" >&2; exit 1 ;; \
    esac \
    && printf '%s\n' "${triple}" > /rust-target \
    && : > /cross-env \
    && if [ "${TARGETARCH}" != "${BUILDARCH}" ]; then \
         apt-get update \
         && apt-get install -y --no-install-recommends "${cross_gcc}" "${cross_libc}" \
         && rm -rf /var/lib/apt/lists/* \
         && rustup target add "${triple}" \
         && { printf 'export CARGO_TARGET_%s_LINKER=%s-gcc\n' "$(tr 'a-z-' 'A-Z_' <<<"${triple}")" "${gnu}"; \
              printf 'export CC_%s=%s-gcc\n' "${triple//-/_}" "${gnu}"; \
              printf 'export AR_%s=%s-ar\n' "${triple//-/_}" "${gnu}"; } > /cross-env; \
       fi

WORKDIR /src
COPY . .

# The commit `xray -v` reports (build.rs reads it; .git is not in the build context):
#   docker buildx build --build-arg XRAY_GIT_COMMIT="$(git rev-parse --short=12 HEAD)" .
ARG XRAY_GIT_COMMIT=""

# The registry and target caches persist between builds (BuildKit cache mounts); the binary
# is copied out of the cache mount so that the next stage can take it.
# A native build names no --target: `--target` changes the symbol names rustc derives, and
# the release layout in link/symbol-order.txt (build.rs) lists the names of a host build.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,id=xray-daemon-target-${TARGETARCH},sharing=locked \
    . /cross-env \
    && target="$(cat /rust-target)" \
    && if [ "${TARGETARCH}" = "${BUILDARCH}" ]; then \
         XRAY_SYMBOL_ORDER=on cargo build --release --locked --bin xray \
         && install -D -m 0755 target/release/xray /out/xray; \
       else \
         cargo build --release --locked --bin xray --target "${target}" \
         && install -D -m 0755 "target/${target}/release/xray" /out/xray; \
       fi

# ----------------------------------------------------------------------------- final stage
# distroless/cc: glibc, libgcc, CA certificates and /etc/passwd, nothing else (no shell).
FROM gcr.io/distroless/cc-debian12:nonroot
ARG XRAY_GIT_COMMIT=""

LABEL org.opencontainers.image.title="xray-daemon" \
      org.opencontainers.image.description="Kubernetes-native drop-in replacement for the AWS X-Ray daemon" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${XRAY_GIT_COMMIT}"

COPY --from=build /out/xray /usr/bin/xray

USER 10001:10001

# 2000/udp segments, 2000/tcp sampling proxy (and TCP segment ingest), 2100/tcp admin server
# (/healthz, /readyz, /metrics, /debug/status).
EXPOSE 2000/udp 2000/tcp 2100/tcp

# `xray healthcheck` GETs http://127.0.0.1:2100/readyz and exits 0 or 1: no shell or curl
# needed. Kubernetes ignores HEALTHCHECK and uses the chart's probes instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/bin/xray", "healthcheck"]

ENTRYPOINT ["/usr/bin/xray", "-b", "0.0.0.0:2000", "-t", "0.0.0.0:2000", "--admin-address", "0.0.0.0:2100"]
