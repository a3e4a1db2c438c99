from __future__ import annotations

pytest_plugins = [
    "tests.fix_services",
    "tests.fix_stack",
    "tests.fix_faults",
    "tests.fix_browser",
    "tests.fix_node",
    "tests.fix_tenants",
]
