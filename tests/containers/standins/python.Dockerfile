# Test infrastructure: stands in for python:3.11-slim-bookworm where no registry is reachable.
# Like the official image, pip installs into the system interpreter as root.
ARG BASE
FROM ${BASE}
RUN apt-get update && apt-get install -y python3 python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/* /usr/lib/python3.11/EXTERNALLY-MANAGED \
    && ln -s /usr/bin/python3 /usr/local/bin/python && ln -s /usr/bin/pip3 /usr/local/bin/pip
CMD ["python3"]
