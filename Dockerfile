# syntax=docker/dockerfile:1
#
# sshtail_exporter image.
#
#   docker build -t sshtail_exporter .
#   scripts/image        # the same with Debian's podman, offline from any
#                        # registry (see the script)
#   docker run --rm -p 9923:9923 \
#     -v "$PWD/sshtail.yml:/etc/sshtail_exporter/sshtail.yml:ro" \
#     -v "$HOME/.ssh/sshtail_ed25519:/home/sshtail/.ssh/id_ed25519:ro" \
#     -v "$HOME/.ssh/known_hosts:/home/sshtail/.ssh/known_hosts:ro" \
#     sshtail_exporter --config /etc/sshtail_exporter/sshtail.yml
#
# As a sidecar (a local file on a shared volume), see
# deploy/kubernetes/sidecar.yaml.

ARG DEBIAN_IMAGE=debian:bookworm-slim

# ------------------------------------------------------------------- build
FROM ${DEBIAN_IMAGE} AS build
# scripts/deps is the CI's dependency script; `build` installs only what
# compiling needs (compiler, CMake, the -dev packages: no clang, nginx,
# Prometheus or test tools). Copied alone first so that the apt layer is
# cached until the script itself changes.
COPY scripts/deps /src/scripts/deps
RUN /src/scripts/deps build && rm -rf /var/lib/apt/lists/*
COPY . /src
WORKDIR /src
# The CI's build, without the tests. The build dir is created fresh here
# (.dockerignore keeps the host's build*/ out of the context).
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSSHTAIL_TESTS=OFF \
 && cmake --build build -j"$(nproc)" \
 && cmake --install build --prefix /opt/sshtail --strip \
 && /opt/sshtail/bin/sshtail_exporter --version

# ----------------------------------------------------------------- runtime
FROM ${DEBIAN_IMAGE}

ARG VERSION=0.1.0
ARG SOURCE_URL=https://example.invalid/sshtail_exporter
LABEL org.opencontainers.image.title="sshtail_exporter" \
      org.opencontainers.image.description="Prometheus exporter that follows nginx access logs, locally or on remote hosts over SSH (nothing installed remotely)" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="NOASSERTION" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

# Only the shared libraries the binary links (ldd build/sshtail_exporter,
# mapped to packages with dpkg -S; tests/integration/test_deploy.py checks
# this list against the real binary). libc6, libgcc-s1 and libstdc++6 are
# part of debian:bookworm-slim already. The others are named explicitly even
# where another package would pull them in:
#   libprometheus-cpp-core1.0  libprometheus-cpp-core.so.1.0
#   libre2-9                   libre2.so.9
#   libcivetweb1               libcivetweb.so.1
#   libssh-4                   libssh.so.4
#   libyaml-cpp0.7             libyaml-cpp.so.0.7
#   libcrypt1                  libcrypt.so.1
#   libssl3                    libssl.so.3, libcrypto.so.3 (also for the TLS shims)
#   zlib1g                     libz.so.1 (via libssh)
#   libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2
#   libkeyutils1               GSSAPI, via libssh
# openssh-client: ProxyJump / ProxyCommand in ~/.ssh/config run `ssh`.
# Nothing else: no ca-certificates (the exporter makes no outgoing TLS
# connections; it would also bring the openssl command), no curl, no
# compiler. tests/integration/test_image.py builds this image, runs it, and
# lists every program it holds.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libprometheus-cpp-core1.0 \
      libre2-9 \
      libcivetweb1 \
      libssh-4 \
      libyaml-cpp0.7 \
      libcrypt1 \
      libssl3 \
      zlib1g \
      libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2 \
      libkeyutils1 \
      openssh-client \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/log/apt/* \
      /var/log/dpkg.log /var/cache/debconf/*-old /var/lib/dpkg/*-old

# The binary in /usr/local/bin and the TLS shims in
# /usr/local/lib/sshtail_exporter (= <binary dir>/../lib/sshtail_exporter,
# where the exporter looks for them).
COPY --from=build /opt/sshtail/bin/sshtail_exporter /usr/local/bin/sshtail_exporter
COPY --from=build /opt/sshtail/lib/sshtail_exporter/ /usr/local/lib/sshtail_exporter/

# Non-root user. Mount the key, known_hosts (and optionally an ssh config)
# into /home/sshtail/.ssh, or point --ssh.identity-file / --ssh.known-hosts
# elsewhere. /var/lib/sshtail_exporter is for --positions-file (mount a
# volume there to keep positions across container restarts).
RUN groupadd --system --gid 10001 sshtail \
 && useradd --system --uid 10001 --gid sshtail --home-dir /home/sshtail \
      --create-home --shell /usr/sbin/nologin sshtail \
 && install -d -o sshtail -g sshtail -m 0700 /home/sshtail/.ssh \
 && install -d -o sshtail -g sshtail -m 0755 /var/lib/sshtail_exporter \
 && install -d -m 0755 /etc/sshtail_exporter \
 && /usr/local/bin/sshtail_exporter --version

USER 10001:10001
WORKDIR /home/sshtail
ENV USER=sshtail HOME=/home/sshtail
EXPOSE 9923

# No HEALTHCHECK: the slim image has no curl/wget and adding one only for
# that grows the image; orchestrators probe /-/healthy and /-/ready over
# HTTP themselves (see deploy/kubernetes/sidecar.yaml).
ENTRYPOINT ["/usr/local/bin/sshtail_exporter"]
CMD ["--help"]
