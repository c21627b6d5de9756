# A stand-in for the prom/prometheus image (scripts/container-check.sh): Debian's Prometheus
# 2.42 and promtool, run as the prometheus user with its data in /prometheus as compose.yaml
# expects. wget is there for the check's queries from inside the network.
FROM debian:bookworm-slim
RUN set -eux; \
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
    apt-get update; \
    apt-get install -y --no-install-recommends prometheus wget; \
    rm -rf /var/lib/apt/lists/*; \
    mkdir -p /prometheus; \
    chown prometheus:prometheus /prometheus
USER prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
