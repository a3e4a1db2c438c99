"""Undoing a request's ``Content-Encoding``: bounded, off the event loop, and honest about
streams cut short.

aiohttp can inflate bodies itself, but it does so on the event loop, keeps inflating what a
handler left unread after answering, and accepts a gzip stream that ends at a flush point as
the part it holds. Ingest's services therefore take bodies as sent (``auto_decompress`` off,
:func:`pubsub.http.new_app`) and inflate them here:

- in a worker thread (zlib releases the GIL), at most ``WORKERS`` bodies at once, so that
  ``/healthz`` and small requests go on while bombs arrive;
- in steps of at most ``STEP`` bytes of output, each counted against the request's share of
  the memory budget before the next is made, and to at most ``limit`` bytes in all;
- refusing a stream that ends before its end (no gzip trailer, no final deflate block), bytes
  after the last member that are not another member, and more than ``MAX_MEMBERS`` members.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

# Gzip members one body may concatenate: real clients send one; many tiny members only cost.
MAX_MEMBERS = 1024
# Bodies inflated at once; more wait their turn (each holds its share of the memory budget).
WORKERS = 2
# Compressed bodies up to this size inflate on the loop: at most about 1,000 times as much
# output (zlib's best ratio), a fraction of a millisecond, less than handing it to a thread.
INLINE_BYTES = 512
# Output of one step: counted against the memory budget before the next is made.
STEP = 1024 * 1024

# The input is fed in windows: a fresh decompressor copies everything after its member into
# ``unused_data``, which over many small members would be quadratic.
_WINDOW_MIN, _WINDOW_MAX = 64, 64 * 1024

ENCODINGS = ("gzip", "x-gzip", "deflate")

_executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="inflate")


class Unreadable(ValueError):
    """The body does not inflate: the message says why (for a ``400``)."""


class TooLarge(ValueError):
    """The body inflates to more than the limit (for a ``413``)."""


def encoding_of(header: str) -> str | None:
    """The encoding a ``Content-Encoding`` header names, ``None`` for identity; ``ValueError``
    naming what is not supported."""
    value = header.strip().lower()
    if value in ("", "identity"):
        return None
    if value not in ENCODINGS:
        raise ValueError(
            f"unsupported Content-Encoding {header[:40]!r}: send gzip, deflate or identity"
        )
    return "gzip" if value == "x-gzip" else value


class Inflater:
    """One body being inflated, in steps of bounded output (:meth:`step`), so that whoever
    drives it can count each step against a budget before asking for the next."""

    def __init__(self, data: bytes, encoding: str, *, limit: int) -> None:
        if encoding == "gzip":
            self._wbits = 16 + zlib.MAX_WBITS
        elif data[:1] and data[0] & 0x0F == 8:
            self._wbits = zlib.MAX_WBITS  # deflate as RFC 9110 says: zlib's format
        else:
            self._wbits = -zlib.MAX_WBITS  # raw deflate, which some clients send under that name
        self._view = memoryview(data)
        self._encoding = encoding
        self._limit = limit
        self._decoder = zlib.decompressobj(self._wbits)
        self._position = 0  # where the next input comes from
        self._window = _WINDOW_MIN
        self._members = 1
        self.produced = 0
        self.finished = not data

    def step(self, most: int) -> bytes:
        """At most ``most`` (> 0) more bytes of the body; ``b""`` once it is all out.
        :class:`TooLarge` past the limit, :class:`Unreadable` for a stream that is not
        whole."""
        parts: list[bytes] = []
        got = 0
        try:
            while got < most and not self.finished:
                out = self._next(min(most - got, self._limit + 1 - self.produced))
                got += len(out)
                self.produced += len(out)
                if self.produced > self._limit:
                    raise TooLarge(f"body exceeds the limit of {self._limit} bytes once inflated")
                parts.append(out)
        except zlib.error as exc:
            raise Unreadable(f"the body is not valid {self._encoding}: {exc}") from None
        return b"".join(parts)

    def _next(self, most: int) -> bytes:
        decoder = self._decoder
        if decoder.eof:
            if self._position == len(self._view):
                self.finished = True
                return b""
            self._next_member()
            decoder = self._decoder
        if self._position == len(self._view):
            # Every byte was fed; output held back by a bound may still be inside zlib.
            out = decoder.decompress(b"", most)
            if not out and not decoder.eof:
                raise Unreadable(
                    f"the {self._encoding} stream is cut short: it ends before its last block"
                )
            return out
        # Input is sliced from the body at the position reached, never taken back from the
        # decoder's unconsumed_tail: each call says exactly how much of its input it used.
        end = min(self._position + self._window, len(self._view))
        unused = len(decoder.unused_data)
        out = decoder.decompress(self._view[self._position : end], most)
        if decoder.eof:  # the member ended: what followed it is in unused_data
            self._position = end - (len(decoder.unused_data) - unused)
        else:  # the output bound may have held some input back
            self._position = end - len(decoder.unconsumed_tail)
        self._window = min(self._window * 2, _WINDOW_MAX)
        return out

    def _next_member(self) -> None:
        if self._encoding != "gzip":
            raise Unreadable(f"bytes follow the end of the {self._encoding} stream")
        self._members += 1
        if self._members > MAX_MEMBERS:
            raise Unreadable(f"the gzip body has more than {MAX_MEMBERS} members")
        self._decoder = zlib.decompressobj(self._wbits)
        self._window = _WINDOW_MIN


async def inflate(
    data: bytes,
    encoding: str,
    *,
    limit: int,
    gate: asyncio.Semaphore,
    hold: Callable[[int], None] = lambda _: None,
) -> bytes:
    """``data`` inflated in steps of ``STEP`` bytes, each in a worker thread unless the body
    is tiny, while holding ``gate`` (one of ``WORKERS`` places: see :func:`gate`), ``hold``
    told of each step's output before the next is made (and of the whole once more for the
    moment the steps are joined)."""
    inflater = Inflater(data, encoding, limit=limit)
    parts: list[bytes] = []
    if len(data) <= INLINE_BYTES:
        while not inflater.finished:
            out = inflater.step(STEP)
            hold(len(out))
            parts.append(out)
    else:
        loop = asyncio.get_running_loop()
        # Whole bodies take turns: were every body's steps to alternate, each would hold
        # part of its output and none might get far enough to finish.
        async with gate:
            while not inflater.finished:
                out = await loop.run_in_executor(_executor, inflater.step, STEP)
                hold(len(out))
                parts.append(out)
    if len(parts) <= 2:  # one step and the empty last one: nothing to join
        return parts[0] if parts else b""
    hold(inflater.produced)
    return b"".join(parts)


def gate() -> asyncio.Semaphore:
    """The places for bodies inflating at once, one set per application."""
    return asyncio.Semaphore(WORKERS)


def inflate_sync(data: bytes, encoding: str, *, limit: int) -> bytes:
    """``data`` inflated at once: :class:`TooLarge` past ``limit`` bytes (checked as the
    output grows), :class:`Unreadable` when it is not a whole stream of ``encoding``."""
    return Inflater(data, encoding, limit=limit).step(limit + 1)
