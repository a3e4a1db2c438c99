"""Giving memory back to the system after a burst.

Python frees the objects of a burst, but glibc keeps the freed pages for the process: its RSS
stays at the burst's peak until the allocator is told to return them. Each service calls
:func:`give_back` once a burst is over (ingest when no request body is held, a consumer when a
backlog it took in has been stored), not after every request: it costs a few milliseconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None  # not glibc (musl, macOS): freed memory stays with the process
    return trim


_MALLOC_TRIM = _load_malloc_trim()

CAN_GIVE_BACK = _MALLOC_TRIM is not None


def give_back() -> None:
    """Return the allocator's free pages to the system (glibc); nothing elsewhere."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
