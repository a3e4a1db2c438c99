# Test infrastructure, sourced by scripts/test-containers: the images the compose file and
# the testcontainers fixtures use.
#
# For each server the official image named in docker-compose.yml is used when it is present or
# can be pulled. When it cannot (no registry reachable), a stand-in is built from Debian's
# package of the same server (tests/containers/standins/) and PUBSUB_IMAGE_<NAME> points at it.
# A PUBSUB_IMAGE_<NAME> set by the caller is used as it is. Docker's build cache makes a second
# run cheap.

STANDINS=tests/containers/standins
NO_REGISTRY=""  # set once an official image could not be pulled
STANDIN_BASE=pubsub-standin/debian:bookworm

_official() {  # the default image of a PUBSUB_IMAGE_<NAME> variable in docker-compose.yml
    sed -n "s/.*\${$1:-\([^}]*\)}.*/\1/p" docker-compose.yml | head -n 1
}

_build_standin() {  # role tag
    if ! docker image inspect "$STANDIN_BASE" >/dev/null 2>&1; then
        say "building the stand-ins' Debian base image with debootstrap (about 30 s)"
        "$STANDINS/base.sh" "$STANDIN_BASE"
    fi
    say "building stand-in $2 from Debian's packages"
    local log
    log=$(mktemp)
    if ! docker build --build-arg BASE="$STANDIN_BASE" -t "$2" -f "$STANDINS/$1.Dockerfile" \
            "$STANDINS" >"$log" 2>&1; then
        # The classic builder prints "Step N/M : ..." before each step: show the failed one.
        grep -n '^Step ' "$log" | tail -n 1 >&2 || true
        tail -n 25 "$log" >&2
        rm -f "$log"
        die "building the $1 stand-in failed at the step above"
    fi
    rm -f "$log"
}

ensure_images() {
    local role var official
    for role in python postgres rabbitmq nginx prometheus; do
        var="PUBSUB_IMAGE_$(printf '%s' "$role" | tr '[:lower:]' '[:upper:]')"
        if [ -n "${!var:-}" ]; then
            docker image inspect "${!var}" >/dev/null 2>&1 || docker pull -q "${!var}" >/dev/null \
                || die "$var=${!var} is neither present nor pullable"
            say "$role: ${!var} (from $var)"
            continue
        fi
        official=$(_official "$var")
        [ -n "$official" ] || die "docker-compose.yml names no default for $var"
        if docker image inspect "$official" >/dev/null 2>&1 \
                || docker pull -q "$official" >/dev/null 2>&1; then
            say "$role: $official"
            export "$var=$official"
        else
            NO_REGISTRY=1
            _build_standin "$role" "pubsub-standin/$role:latest"
            export "$var=pubsub-standin/$role:latest"
            say "$role: $official cannot be pulled; using the stand-in ${!var}"
        fi
    done
}

# pip inside the image build must trust what pip trusts here (a TLS-intercepting proxy's CA).
extra_ca_bundle() {
    local bundle=${PIP_CERT:-}
    if [ -z "$bundle" ] && [ -f /etc/pip.conf ]; then
        bundle=$(sed -n 's/^cert *= *//p' /etc/pip.conf | head -n 1)
    fi
    if [ -n "$bundle" ] && [ -f "$bundle" ] && [ -z "${PUBSUB_EXTRA_CA_BUNDLE:-}" ]; then
        cp "$bundle" deploy/ca-certificates/local-pip-bundle.pem
        say "the image build trusts pip's CA bundle here ($bundle)"
    fi
}
