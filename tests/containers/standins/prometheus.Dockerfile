# Test infrastructure: stands in for prom/prometheus where no registry is reachable: the same
# entry point and defaults (/etc/prometheus/prometheus.yml, data in /prometheus), promtool on
# PATH, running as nobody.
ARG BASE
FROM ${BASE}
RUN apt-get update && apt-get install -y prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
EXPOSE 9090
VOLUME /prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
