"""What a JSON body takes in memory once parsed, bounded before it is parsed.

A JSON body can be small and its parsed form large: ``[{},{},…]`` spends three bytes on each
object that costs about seventy as a Python dict. What parsing costs is bounded by what the
body holds, counted at the speed of ``bytes.count``: every byte (strings take at most a few
times their UTF-8 length), every value (at most one per ``,``, ``:`` or bracket) and every
object or array. The receivers hold this much of the memory budget before they parse, so a
body that would parse into more than ingest may hold for one request is a ``413`` before its
first byte is parsed.
"""

from __future__ import annotations

# Bytes per byte of the body, per value and per object or array: the sizes of CPython's
# str, int, float, list and dict (with their slots in a list or dict), rounded up.
PER_BYTE = 2
PER_VALUE = 64
PER_CONTAINER = 64


def parsed_size(body: bytes) -> int:
    """An upper estimate of the bytes ``body`` takes once parsed into Python objects."""
    containers = body.count(b"{") + body.count(b"[")
    values = body.count(b",") + body.count(b":") + containers + 1
    return PER_BYTE * len(body) + PER_VALUE * values + PER_CONTAINER * containers
