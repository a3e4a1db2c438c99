"""Closed by default: a service that listens beyond loopback needs its token (or anonymous
access asked for by name), and the compose stack's tokens step gives, keeps or generates them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from publisher.__main__ import parse_args
from pubsub import api, tokens
from pubsub.routes import Auth

BOTH: dict[Auth, str] = {"publish": "p-token", "read": "r-token"}


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_serves_without_tokens(host: str) -> None:
    assert tokens.open_doors(api.GATEWAY, {}, host=host, allow_anonymous=False) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.7", "pubsub.example"])
def test_beyond_loopback_a_guarded_route_needs_its_token(host: str) -> None:
    refusal = tokens.open_doors(api.INGEST, {"read": "r"}, host=host, allow_anonymous=False)
    assert refusal is not None
    assert "PUBSUB_PUBLISH_TOKEN (or PUBSUB_PUBLISH_TOKEN_FILE)" in refusal
    assert "PUBSUB_READ_TOKEN" not in refusal  # ingest serves no read route
    assert "PUBSUB_ALLOW_ANONYMOUS=true" in refusal
    assert tokens.open_doors(api.INGEST, BOTH, host=host, allow_anonymous=False) is None
    assert tokens.open_doors(api.INGEST, {}, host=host, allow_anonymous=True) is None
    # Open routes (health, metrics) need none.
    assert tokens.open_doors(api.HEALTH, {}, host=host, allow_anonymous=False) is None


def _environment(**env: str) -> dict[str, str]:
    # Nothing listens at these URLs: the refusal must come before any connection is tried.
    base = {k: v for k, v in os.environ.items() if not k.startswith("PUBSUB_")}
    return {
        **base,
        "PUBSUB_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/",
        "PUBSUB_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/test",
        "PUBSUB_LOG_FORMAT": "text",
        **env,
    }


def _start(module: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module],
        env=_environment(**env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(("module", "variable"), [("ingest", "PUBLISH"), ("readapi", "READ")])
def test_a_service_beyond_loopback_without_its_token_refuses_to_start(
    module: str, variable: str
) -> None:
    done = _start(module, PUBSUB_HTTP_HOST="0.0.0.0")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"configuration error: {module}: PUBSUB_HTTP_HOST=0.0.0.0 serves")
    assert f"PUBSUB_{variable}_TOKEN (or PUBSUB_{variable}_TOKEN_FILE) is not set" in line


def test_the_whole_stack_refuses_before_starting_a_child() -> None:
    done = _start("stack", PUBSUB_HTTP_HOST="0.0.0.0", PUBSUB_READ_TOKEN="r")
    assert done.returncode == 2, done.stderr
    assert "PUBSUB_PUBLISH_TOKEN (or" in done.stderr and "PUBSUB_READ_TOKEN (" not in done.stderr


def test_anonymous_access_is_asked_for_by_name() -> None:
    # Past the check, ingest goes on to wait for the broker, which is not there: its first
    # "unreachable" line shows it started.
    env = _environment(PUBSUB_HTTP_HOST="0.0.0.0", PUBSUB_ALLOW_ANONYMOUS="true")
    with subprocess.Popen(
        [sys.executable, "-m", "ingest"], env=env, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stderr is not None
            lines = []
            for line in proc.stderr:  # ends when the process does
                lines.append(line)
                if "RabbitMQ unreachable" in line:
                    break
            assert "RabbitMQ unreachable" in lines[-1], lines
        finally:
            proc.terminate()


# --- the compose stack's tokens step --------------------------------------------------------


def _init(directory: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PUBSUB_")}
    return subprocess.run(
        [sys.executable, "-m", "pubsub.tokens", "init", "--dir", str(directory), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )


def test_tokens_are_generated_once_printed_once_and_kept(tmp_path: Path) -> None:
    directory = tmp_path / "tokens"
    first = _init(directory)
    made = {k: (directory / k).read_text().strip() for k in tokens.KINDS}
    assert all(len(t) >= 43 for t in made.values()) and made["publish"] != made["read"]
    for kind, token in made.items():
        assert f"PUBSUB_{kind.upper()}_TOKEN={token}" in first.stdout
        assert stat.S_IMODE((directory / kind).stat().st_mode) == 0o600
    again = _init(directory)
    assert {k: (directory / k).read_text().strip() for k in tokens.KINDS} == made
    assert not any(t in again.stdout for t in made.values())
    assert "Tokens in place" in again.stdout
    assert tokens.show(directory) == made


def test_a_token_from_the_environment_wins_and_new_replaces_the_rest(tmp_path: Path) -> None:
    _init(tmp_path)
    old_read = (tmp_path / "read").read_text()
    given = _init(tmp_path, PUBSUB_PUBLISH_TOKEN="from-env")
    assert (tmp_path / "publish").read_text() == "from-env\n"
    assert (tmp_path / "read").read_text() == old_read
    assert "from-env" not in given.stdout  # given tokens are the operator's: not printed
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    _init(tmp_path, "--new", PUBSUB_READ_TOKEN_FILE=str(secret))
    assert (tmp_path / "read").read_text() == "from-file\n"
    assert (tmp_path / "publish").read_text() not in ("from-env\n", "")


def test_show_prints_shell_assignments_that_eval_gives_back(tmp_path: Path) -> None:
    odd = 'it\'s a $token with `spaces` and \\ "quotes"'
    _init(tmp_path, PUBSUB_PUBLISH_TOKEN=odd)
    shown = subprocess.run(
        [sys.executable, "-m", "pubsub.tokens", "show", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    evaluated = subprocess.run(
        ["bash", "-c", 'eval "$1"; printf "%s\\n%s" "$PUBSUB_PUBLISH_TOKEN" "$PUBSUB_READ_TOKEN"',
         "-", shown],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert evaluated.split("\n") == [odd, (tmp_path / "read").read_text().strip()]


def test_the_publisher_reads_its_tokens_from_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "publish").write_text("p-secret\n")
    (tmp_path / "read").write_text("")
    monkeypatch.setenv("PUBSUB_PUBLISH_TOKEN_FILE", str(tmp_path / "publish"))
    monkeypatch.setenv("PUBSUB_READ_TOKEN", "r-secret")
    cfg = parse_args([])
    assert (cfg.publish_token, cfg.read_token) == ("p-secret", "r-secret")
    monkeypatch.setenv("PUBSUB_READ_TOKEN_FILE", str(tmp_path / "read"))
    with pytest.raises(SystemExit) as exited:
        parse_args([])
    assert exited.value.code == 2
    assert "PUBSUB_READ_TOKEN_FILE: " in capsys.readouterr().err


@pytest.mark.parametrize("module", ["ingest", "readapi", "stack"])
def test_a_tenants_file_that_cannot_be_used_stops_the_start_naming_the_entry(
    module: str, tmp_path: Path
) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text("[tenants.default]\nstreams = -1\n")
    done = _start(module, PUBSUB_HTTP_HOST="0.0.0.0", PUBSUB_TENANTS_FILE=str(path))
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"configuration error: PUBSUB_TENANTS_FILE={path}: ")
    assert "tenants.default.streams: Input should be greater than or equal to 0" in line
