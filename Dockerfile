# Multi-stage build: compile with the Rust toolchain (cmake for Pingora's zlib-ng; the image's
# make and gcc build jemalloc), run on slim.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /srv/tollgate tollgate \
    && mkdir -p /srv/tollgate/data /srv/tollgate/certs && chown -R tollgate /srv/tollgate
WORKDIR /srv/tollgate
COPY --from=build /src/target/release/tollgate /usr/local/bin/tollgate
COPY --from=build /src/target/release/tollgate-demo-backend /usr/local/bin/tollgate-demo-backend
COPY conf ./conf
USER tollgate
EXPOSE 8443 8080
# The admin (9090) and metrics (9091) listeners bind loopback in the demo config; publish them
# by editing conf/ (and set TOLLGATE_ADMIN_TOKEN when the admin API leaves loopback).
ENTRYPOINT ["tollgate"]
CMD ["-c", "conf/tollgate.yaml"]
