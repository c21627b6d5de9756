#!/bin/sh
# Writes rabbitmq.conf from RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS, then runs the
# command (rabbitmq-server, which drops to the rabbitmq user itself).
set -eu
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
{
  echo "default_user = ${RABBITMQ_DEFAULT_USER:-guest}"
  echo "default_pass = ${RABBITMQ_DEFAULT_PASS:-guest}"
  echo "loopback_users = none"
  echo "listeners.tcp.default = 5672"
} >/etc/rabbitmq/rabbitmq.conf
exec "$@"
