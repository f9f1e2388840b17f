# The cni-metrics-helper image: `make image` builds it with podman (tagged with the version in
# CMakeLists.txt and latest). It builds for any architecture Debian has (amd64 and arm64 tested
# alike): no stage names an architecture or an architecture's path. Multi-arch, with podman:
#   podman build --platform linux/amd64,linux/arm64 --manifest REPO:VERSION .
# (docs/image.md). The image test (test/integration/image_runs_confined.py) runs the result.

# Build stage: Debian 12 with what the program needs to build (tests are not built here).
FROM debian:12 AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake make gcc libc6-dev pkg-config libuv1-dev libjansson-dev libmbedtls-dev \
      libcurl4-openssl-dev zlib1g-dev libexpat1-dev libyaml-dev node-llhttp \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the program is built from, so a change elsewhere (tests, docs) reuses the cached build.
COPY CMakeLists.txt ./
COPY include include
COPY src src
COPY third_party third_party
RUN cmake -S . -B build-image -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMH_TESTS=OFF \
    && cmake --build build-image -j "$(nproc)" --target cni-metrics-helper \
    && strip --strip-debug build-image/cni-metrics-helper

# Runtime stage: the shared libraries the binary links (their own dependencies come with them),
# CA certificates for HTTPS to AWS and the Kubernetes API, and nothing else.
FROM debian:12-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libuv1 libjansson4 libmbedcrypto7 libcurl4 libexpat1 libyaml-0-2 zlib1g ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log
COPY --from=build /src/build-image/cni-metrics-helper /usr/local/bin/cni-metrics-helper
COPY LICENSE NOTICE /usr/share/doc/cni-metrics-helper/
COPY --from=build /usr/share/doc/node-llhttp/copyright /usr/share/doc/node-llhttp/copyright
ARG VERSION=unknown
LABEL org.opencontainers.image.title="cni-metrics-helper" \
      org.opencontainers.image.description="Aggregates the AWS VPC CNI's ipamD metrics of every node and publishes them to CloudWatch" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed non-root user (the Kubernetes manifests run it so, with a read-only root filesystem).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cni-metrics-helper"]
