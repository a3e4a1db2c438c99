from __future__ import annotations

from tests.containers.fix_compose import compose

__all__ = ["compose"]
