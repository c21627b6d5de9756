# A stand-in for the rabbitmq:3-management image (scripts/container-check.sh): Debian's
# RabbitMQ 3.10, with a docker-entrypoint.sh that, like the official one, takes the default
# user and password from RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS (compose.yaml's
# entrypoint exports the password from the secret file first). rabbitmq-diagnostics is on the
# PATH for the healthcheck. The management plugin is left off (nothing here uses it).
FROM debian:bookworm-slim
RUN set -eux; \
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
    apt-get update; \
    apt-get install -y --no-install-recommends rabbitmq-server; \
    rm -rf /var/lib/apt/lists/*; \
    mkdir -p /var/lib/rabbitmq /etc/rabbitmq; \
    chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
COPY rabbitmq-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
EXPOSE 5672
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["rabbitmq-server"]
