# Build stage: Debian 12 with the packages `make deps` installs for a build.
# test/integration/dockerfile_build_commands.py runs this stage's RUN commands in a clean copy of
# the tree and checks the runtime stage's packages against `ldd` of the result: keep the commands
# free of absolute paths other than WORKDIR.
FROM debian:12 AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake make gcc libc6-dev pkg-config libuv1-dev libjansson-dev libmbedtls-dev \
      libcurl4-openssl-dev zlib1g-dev libcmocka-dev libexpat1-dev node-llhttp ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B build-image -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    && cmake --build build-image -j "$(nproc)" --target cni-metrics-helper \
    && strip --strip-debug build-image/cni-metrics-helper

# Runtime stage: only the shared libraries the binary links (their dependencies come with them),
# CA certificates for HTTPS to AWS and the Kubernetes API, a non-root user.
FROM debian:12-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libuv1 libjansson4 libmbedcrypto7 libcurl4 libexpat1 zlib1g ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build-image/cni-metrics-helper /usr/local/bin/cni-metrics-helper
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cni-metrics-helper"]
