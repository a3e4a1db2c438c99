from __future__ import annotations

pytest_plugins = ["tests.containers.fix_compose"]
