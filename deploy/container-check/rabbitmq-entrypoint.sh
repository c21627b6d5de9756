#!/bin/sh
# Writes rabbitmq.conf from RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS, then execs the
# command as the rabbitmq user. setpriv execs in place (no su/runuser parent process that
# would hold PID 1 and keep SIGTERM from the broker), so `docker stop` is a clean shutdown.
set -eu
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
{
  echo "default_user = ${RABBITMQ_DEFAULT_USER:-guest}"
  echo "default_pass = ${RABBITMQ_DEFAULT_PASS:-guest}"
  echo "loopback_users = none"
  echo "listeners.tcp.default = 5672"
} >/etc/rabbitmq/rabbitmq.conf
if [ "$1" = rabbitmq-server ]; then
  shift
  set -- /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
fi
export HOME=/var/lib/rabbitmq
exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups -- "$@"
