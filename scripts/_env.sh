# Sourced by the scripts: a virtualenv with the project installed, and the local services up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c "import pubsub, pytest, mypy" 2>/dev/null \
    || [ pyproject.toml -nt .venv/.installed ]; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[test,dev,tools]'
    touch .venv/.installed
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Start the machine's own RabbitMQ and PostgreSQL when they are installed but down, and wait
# for what was started (a machine without them goes on to testcontainers at once). Every
# script but the fast test lane (./scripts/test --fast) needs them.
ensure_servers() {
    local started_local=""
    if ! port_open 5432 && command -v pg_ctlcluster >/dev/null 2>&1; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
        started_local=1
    fi
    if ! port_open 5672 && command -v rabbitmq-server >/dev/null 2>&1; then
        rabbitmq-server -detached || true
        started_local=1
    fi
    if [ -n "$started_local" ]; then
        for _ in $(seq 1 60); do
            if port_open 5432 && port_open 5672; then break; fi
            sleep 1
        done
    fi
}
[ -n "${SCRIPT_NEEDS_NO_SERVERS:-}" ] || ensure_servers

# The events page is tested in a real browser (tests/test_events_page.py): Debian's headless
# Chromium and its driver, installed when missing (as root, or through sudo). Where that cannot
# be done the suite's own check (tests/prerequisites.py) stops before the first test, saying
# what is missing and how to leave the browser tests out.
ensure_chromium() {
    if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
        return
    fi
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        if ! command -v sudo >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
            return
        fi
        sudo="sudo"
    fi
    echo "installing Debian's chromium and chromium-driver for the browser tests" >&2
    { $sudo apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver \
        >/dev/null; } || echo "could not install chromium (the browser tests need it)" >&2
}
