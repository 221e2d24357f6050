# syntax=docker/dockerfile:1
# postern as an OCI image: a release build in a Rust image, run from Debian
# slim as a non-root user. See README "Run it in a container".
#
#   docker build -t postern:0.1.0 .
#   docker run ... postern:0.1.0            (README has the full command)

FROM rust:1.95-slim-bookworm AS build
# OpenSSL for webauthn-rs (passkeys).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo fetch --locked \
    && rm -rf src
COPY migrations migrations
COPY src src
COPY config config
RUN cargo build --release --locked \
    && install -D -m 0755 target/release/postern /out/usr/bin/postern \
    && /out/usr/bin/postern man | gzip -9n > /out/postern.1.gz

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 postern \
    && useradd --system --uid 10001 --gid postern --home-dir /var/lib/postern \
        --no-create-home --shell /usr/sbin/nologin postern \
    && install -d -o postern -g postern -m 0750 /var/lib/postern
COPY --from=build /out/usr/bin/postern /usr/bin/postern
COPY --from=build /out/postern.1.gz /usr/share/man/man1/postern.1.gz
COPY config/postern.toml /usr/share/doc/postern/postern.toml.example
COPY LICENSE /usr/share/doc/postern/LICENSE
COPY contrib/docker/postern.toml /etc/postern/postern.toml
USER postern:postern
WORKDIR /var/lib/postern
VOLUME ["/var/lib/postern"]
EXPOSE 1143 1993 1110 1995 1587 1465 8080
ENV POSTERN_CONFIG=/etc/postern/postern.toml
ENTRYPOINT ["/usr/bin/postern"]
CMD ["serve"]
