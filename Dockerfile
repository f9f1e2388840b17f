# Build stage: Debian 12 with the same packages `make deps` installs.
FROM debian:12 AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake make gcc pkg-config libuv1-dev libjansson-dev libmbedtls-dev libcurl4-openssl-dev \
      zlib1g-dev libcmocka-dev node-llhttp ca-certificates && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build /build -j "$(nproc)" \
      --target cni-metrics-helper

# Runtime stage: only the shared libraries the binary links, a non-root user.
FROM debian:12-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libuv1 libjansson4 libmbedcrypto7 libcurl4 zlib1g ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /build/cni-metrics-helper /usr/local/bin/cni-metrics-helper
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cni-metrics-helper"]
