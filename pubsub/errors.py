"""Errors shared by the services."""

from __future__ import annotations


class Unusable(RuntimeError):
    """A server this service must not work with: retrying cannot help, so the service stops.

    The message is one line saying what is wrong and what to do about it.
    """
