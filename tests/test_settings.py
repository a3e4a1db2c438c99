"""Settings from the environment, and the README's table generated from them."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from pubsub.settings import (
    DEPLOYMENT_VARIABLES,
    TEST_PREFIX,
    Settings,
    SettingsError,
    env_name,
    markdown_table,
)

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_and_overrides() -> None:
    s = Settings.from_env({"PUBSUB_INGEST_PORT": "9000", "PUBSUB_PUBLISH_TIMEOUT": "1.5"})
    assert s.ingest_port == 9000
    assert s.publish_timeout == 1.5
    assert s.queue == "pubsub.events"
    assert Settings.from_env({}, queue="x").queue == "x"


def test_bad_values_say_which_variable() -> None:
    with pytest.raises(ValueError, match="PUBSUB_PREFETCH"):
        Settings.from_env({"PUBSUB_PREFETCH": "many"})
    with pytest.raises(ValueError, match="PUBSUB_PREFETCH"):
        Settings.from_env({"PUBSUB_PREFETCH": "0"})
    with pytest.raises(ValueError, match="PUBSUB_DB_SCHEMA"):
        Settings.from_env({"PUBSUB_DB_SCHEMA": "x; DROP TABLE events"})


def test_passwords_are_redacted() -> None:
    s = Settings.from_env(
        {}, amqp_url="amqp://user:secret@host/", database_url="postgresql://u:pw@h/db"
    )
    shown = s.redacted()
    assert "secret" not in str(shown) and "pw@" not in str(shown)
    libpq = Settings.from_env({}, database_url="postgresql://h/db?user=u&password=pw2&sslmode=x")
    assert "pw2" not in str(libpq.redacted())
    assert "sslmode=x" in libpq.redacted()["database_url"]


def test_a_settings_error_does_not_print_a_password() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"PUBSUB_AMQP_URL": "http://user:secret@host/,amqp://u:s2@h2/"})
    assert "secret" not in str(caught.value) and "s2" not in str(caught.value)
    assert "PUBSUB_AMQP_URL='http://user:***@host/" in str(caught.value)


def test_the_docs_configuration_table_matches_the_code() -> None:
    operations = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    assert markdown_table() in operations, (
        "regenerate with: python -m pubsub.settings --write docs/operations.md"
    )


# The numeric settings for which 0 has a meaning: a free port, "store what has arrived", "no
# merges" and "on SIGHUP only".
ZERO_MEANS_SOMETHING = {
    "consumer_port",
    "batch_max_wait",
    "merge_interval",
    "tenants_reload_interval",
}
NUMERIC = [name for name, info in Settings.model_fields.items() if info.annotation in (int, float)]


def test_every_numeric_setting_is_bounded() -> None:
    assert len(NUMERIC) > 30, "the model lost its numeric settings"


@pytest.mark.parametrize("name", NUMERIC)
def test_minus_one_and_zero_get_a_verdict_naming_the_variable(name: str) -> None:
    variable = "PUBSUB_" + name.upper()
    with pytest.raises(ValueError, match=f"^{variable}='-1': ") as refused:
        Settings.from_env({variable: "-1"})
    assert "\n" not in str(refused.value)
    if name in ZERO_MEANS_SOMETHING:
        assert getattr(Settings.from_env({variable: "0"}), name) == 0
    else:
        with pytest.raises(ValueError, match=f"^{variable}='0': "):
            Settings.from_env({variable: "0"})


def test_a_negative_publish_timeout_no_longer_starts() -> None:
    with pytest.raises(ValueError, match="PUBSUB_PUBLISH_TIMEOUT='-1': input should be greater"):
        Settings.from_env({"PUBSUB_PUBLISH_TIMEOUT": "-1"})


def test_rules_across_settings_name_both_variables() -> None:
    with pytest.raises(ValueError, match=r"PUBSUB_INGEST_MEMORY_BUDGET .* PUBSUB_MAX_BODY_BYTES"):
        Settings.from_env({"PUBSUB_MAX_BODY_BYTES": "1000", "PUBSUB_INGEST_MEMORY_BUDGET": "999"})
    with pytest.raises(ValueError, match="PUBSUB_RETRY_FIRST_DELAY"):
        Settings.from_env({"PUBSUB_RETRY_FIRST_DELAY": "9", "PUBSUB_RETRY_MAX_DELAY": "1"})


def test_retention_is_parsed_once_into_a_duration() -> None:
    assert Settings.from_env({"PUBSUB_RETENTION": "30d"}).retention == timedelta(days=30)
    assert Settings.from_env({}).retention is None


def test_children_read_back_the_same_settings() -> None:
    s = Settings.from_env({"PUBSUB_RETENTION": "90m", "PUBSUB_PREFETCH": "7"}, read_token="t")
    assert Settings.from_env(s.to_env()) == s


def test_the_constructor_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBSUB_PREFETCH", "9")
    assert Settings().prefetch == 9
    assert Settings(prefetch=3).prefetch == 3
    assert Settings.from_env({}).prefetch == 64


def test_an_empty_token_file_is_an_error_naming_it(tmp_path: Path) -> None:
    empty = tmp_path / "publish-token"
    empty.write_text("\n")
    with pytest.raises(SettingsError, match=r"PUBSUB_PUBLISH_TOKEN_FILE: .*publish-token is empty"):
        Settings.from_env({"PUBSUB_PUBLISH_TOKEN_FILE": str(empty)})
    empty.write_text("s3cret\n")
    assert Settings.from_env({"PUBSUB_PUBLISH_TOKEN_FILE": str(empty)}).publish_token == "s3cret"


def test_a_misspelled_variable_stops_the_start_naming_the_setting_meant() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"PUBSUB_RETENTON": "7d"})
    said = str(refused.value)
    assert said.startswith("PUBSUB_RETENTON is not a setting (did you mean PUBSUB_RETENTION?)")
    assert "PUBSUB_UNKNOWN_VARIABLES=warn" in said
    # Nothing close: named, without a guess.
    with pytest.raises(SettingsError, match=r"^PUBSUB_XYZZY is not a setting \(every setting"):
        Settings.from_env({"PUBSUB_XYZZY": "1"})


def test_warn_is_the_escape_hatch_and_says_what_it_ignores() -> None:
    settings = Settings.from_env({"PUBSUB_RETENTON": "7d", "PUBSUB_UNKNOWN_VARIABLES": "warn"})
    assert settings.retention is None
    started = subprocess.run(
        [sys.executable, "-c", "from pubsub import service; service.setup('ingest')"],
        env={"PATH": "/usr/bin:/bin", "PUBSUB_RETENTON": "7d", "PUBSUB_UNKNOWN_VARIABLES": "warn"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert (
        "PUBSUB_RETENTON is not a setting (did you mean PUBSUB_RETENTION?); starting anyway"
        in started.stderr
    )


def test_the_test_suites_and_the_compose_files_variables_are_not_refused() -> None:
    given = {TEST_PREFIX + "AMQP_URL": "amqp://x/", "PUBSUB_GRAFANA_PASSWORD": "p", "HOME": "/"}
    assert Settings.from_env(given) == Settings.from_env({})
    # ...and no setting can ever be taken for one of them.
    for name in Settings.model_fields:
        assert not env_name(name).startswith(TEST_PREFIX)
        assert env_name(name) not in DEPLOYMENT_VARIABLES


def test_the_deployment_variables_are_those_the_compose_files_use() -> None:
    used = set()
    for path in [*ROOT.glob("docker-compose*.yml"), *ROOT.glob("deploy/**/*.yml")]:
        used |= set(re.findall(r"\$\{(PUBSUB_[A-Z0-9_]+)", path.read_text()))
    settings = {env_name(name) for name in Settings.model_fields}
    assert used - settings == DEPLOYMENT_VARIABLES


def test_a_service_started_with_a_misspelled_variable_exits_2_saying_so() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ingest"],
        env={"PATH": "/usr/bin:/bin", "PUBSUB_PUBLISH_TIMEOT": "5"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "PUBSUB_PUBLISH_TIMEOT is not a setting (did you mean PUBSUB_PUBLISH_TIMEOUT?)" in (
        done.stderr
    )
