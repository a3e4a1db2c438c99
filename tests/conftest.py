from __future__ import annotations

from pathlib import Path

import pytest

from tests import prerequisites

pytest_plugins = [
    "tests.fix_services",
    "tests.fix_stack",
    "tests.fix_faults",
    "tests.fix_browser",
    "tests.fix_node",
    "tests.fix_tenants",
]

# What a test needs, read from the fixtures it uses (directly or through others), as the
# markers declared in pyproject.toml: `./scripts/test --fast` leaves out every marked test.
_NEEDS = {
    "servers": {"broker", "database"},
    "browser": {"browser"},
    "node": {"node_clients"},
    "cluster": {"cluster", "pair"},
    "containers": {"compose"},
}
_CONTAINERS = Path(__file__).parent / "containers"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:  # before -m
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in _NEEDS.items():
            if used & fixtures:
                item.add_marker(marker)
        if _CONTAINERS in item.path.parents:
            item.add_marker("containers")


# After -m deselected: what the tests that will run need.
@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")
def pytest_check_prerequisites(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.option.collectonly:
        return
    needed = {mark.name for item in items for mark in item.iter_markers()}
    lacking = prerequisites.missing(needed)
    if lacking:
        pytest.exit("this machine cannot run the selected tests:\n" + "\n".join(lacking), 4)
