# A stand-in for the rust:1-bookworm image, for machines that reach no container registry
# (scripts/container-check.sh builds it when missing): the local debian:bookworm-slim plus
# bookworm-security's rustc-web/cargo-web (Rust 1.96), a C toolchain (ring, libsqlite3-sys)
# and the machine's extra CA certificates (copied into ca/ by the script), so cargo can reach
# crates.io through the machine's TLS-inspecting egress.
FROM debian:bookworm-slim
COPY ca/ /usr/local/share/ca-certificates/
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates rustc-web cargo-web gcc libc6-dev make pkg-config git; \
    update-ca-certificates; \
    rm -rf /var/lib/apt/lists/*
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["cargo", "--version"]
