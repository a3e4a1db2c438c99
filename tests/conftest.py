from __future__ import annotations

import pytest

from tests.fix_services import amqp_url, broker, database, database_url, db, http, settings
from tests.fix_stack import stack
from tests.test_fault_suite import REPORTS

__all__ = ["amqp_url", "broker", "database", "database_url", "db", "http", "settings", "stack"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fault suite's table (also when it passed)."""
    for table in terminalreporter.config.stash.get(REPORTS, []):
        terminalreporter.write_sep("-", "fault suite")
        terminalreporter.write_line(table)
