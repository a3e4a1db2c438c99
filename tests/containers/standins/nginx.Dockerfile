# Test infrastructure: stands in for nginx:1-alpine where no registry is reachable; serves
# the mounted /etc/nginx/nginx.conf, logs to the container's output.
ARG BASE
FROM ${BASE}
RUN apt-get update && apt-get install -y nginx \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
