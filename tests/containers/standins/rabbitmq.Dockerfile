# Test infrastructure: stands in for rabbitmq:3-management where no registry is reachable.
# Honours RABBITMQ_DEFAULT_USER / _PASS / _VHOST and RABBITMQ_NODE_PORT, the mounted
# /etc/rabbitmq/enabled_plugins, data in /var/lib/rabbitmq, rabbitmq-diagnostics on PATH.
ARG BASE
FROM ${BASE}
RUN apt-get update && apt-get install -y rabbitmq-server \
    && rm -rf /var/lib/apt/lists/* \
    && echo '[rabbitmq_management,rabbitmq_prometheus].' >/etc/rabbitmq/enabled_plugins \
    && mkdir -p /etc/rabbitmq/conf.d && chown -R rabbitmq:rabbitmq /etc/rabbitmq
ENV HOME=/var/lib/rabbitmq RABBITMQ_LOGS=-
COPY rabbitmq-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/rabbitmq
EXPOSE 5672 15672 15692
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["rabbitmq-server"]
