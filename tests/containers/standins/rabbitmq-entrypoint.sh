#!/bin/sh
# Test infrastructure: the part of the official rabbitmq entry point that compose and
# testcontainers rely on: the default user, password and vhost from the environment.
set -eu
cat >/etc/rabbitmq/conf.d/10-defaults.conf <<CONF
loopback_users = none
listeners.tcp.default = ${RABBITMQ_NODE_PORT:-5672}
default_user = ${RABBITMQ_DEFAULT_USER:-guest}
default_pass = ${RABBITMQ_DEFAULT_PASS:-guest}
default_vhost = ${RABBITMQ_DEFAULT_VHOST:-/}
CONF
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
if [ "$1" = rabbitmq-server ]; then
    shift
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
        /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
fi
exec "$@"
