"""Settings from the environment, and the README's table generated from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from pubsub.settings import Settings, markdown_table


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


def test_readme_configuration_table_matches_the_code() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert markdown_table() in readme, "regenerate with: python -m pubsub.settings"
