# Test infrastructure, sourced by scripts/test-containers: a Docker engine and compose.
#
# A running engine (Docker Desktop, a system service) is used as it is. Otherwise, on a Debian
# or Ubuntu machine where we are root, the engine and compose are installed from the
# distribution's packages and the daemon is started here; stop_engine stops only that daemon.
# Sets COMPOSE (the compose command) and STARTED_DOCKERD (a PID, or empty).

STARTED_DOCKERD=""
DOCKERD_DIR=${DOCKERD_DIR:-/tmp/pubsub-dockerd}

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'test-containers: %s\n' "$*" >&2; exit 1; }

_engine_answers() { docker info >/dev/null 2>&1; }

_apt_install() {
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
        || die "$1 is missing and cannot be installed here (needs root and apt-get): install it, then run again"
    say "installing $1 from the distribution's packages (${*:2})"
    if [ -z "${_APT_UPDATED:-}" ]; then apt-get update -qq; _APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${@:2}" >/dev/null
}

ensure_engine() {
    if ! _engine_answers; then
        if [ -n "${DOCKER_HOST:-}" ]; then
            die "DOCKER_HOST=$DOCKER_HOST does not answer: start that engine or unset DOCKER_HOST"
        fi
        command -v dockerd >/dev/null || _apt_install "the Docker engine" docker.io
        [ "$(id -u)" = 0 ] || die "no Docker engine answers: start Docker (or run as root to let this script start dockerd)"
        if pgrep -x dockerd >/dev/null 2>&1; then
            say "a dockerd is starting (its package's init script, say): waiting for it"
        else
            mkdir -p "$DOCKERD_DIR"
            say "starting dockerd (log: $DOCKERD_DIR/dockerd.log)"
            dockerd >"$DOCKERD_DIR/dockerd.log" 2>&1 &
            STARTED_DOCKERD=$!
        fi
        for _ in $(seq 1 60); do
            _engine_answers && break
            if [ -n "$STARTED_DOCKERD" ] && ! kill -0 "$STARTED_DOCKERD" 2>/dev/null; then
                tail -5 "$DOCKERD_DIR/dockerd.log" >&2
                die "dockerd exited (log above)"
            fi
            sleep 1
        done
        _engine_answers || die "dockerd started but does not answer after 60 s: see $DOCKERD_DIR/dockerd.log"
    fi
    say "Docker engine $(docker version --format '{{.Server.Version}}' 2>/dev/null) answers"
    if docker compose version >/dev/null 2>&1; then
        COMPOSE="docker compose"
    else
        command -v docker-compose >/dev/null || _apt_install "docker compose" docker-compose
        # Compose v1 applies deploy.replicas only in compatibility mode.
        COMPOSE="docker-compose --compatibility"
    fi
    export COMPOSE
    say "compose: $COMPOSE ($($COMPOSE version --short 2>/dev/null || true))"
}

stop_engine() {
    if [ -n "$STARTED_DOCKERD" ] && kill -0 "$STARTED_DOCKERD" 2>/dev/null; then
        say "stopping the dockerd this script started (PID $STARTED_DOCKERD)"
        kill "$STARTED_DOCKERD"
        for _ in $(seq 1 30); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || return 0; sleep 1; done
        kill -9 "$STARTED_DOCKERD" 2>/dev/null || true
    fi
}
