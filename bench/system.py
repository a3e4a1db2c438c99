"""A system of the bench's own: a schema, a queue and ports no one else uses, and the services
as child processes; all of it removed again afterwards."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pubsub import dbschema, failover, topology
from pubsub.settings import Settings
from stack.supervisor import Supervisor, free_port


@contextlib.asynccontextmanager
async def private_system(
    prefix: str, *, consumers: int, code: Path | None = None, **overrides: Any
) -> AsyncIterator[Supervisor]:
    """A :class:`Supervisor` over fresh settings (``<prefix>_<run>`` schema, created unless
    ``code`` is given; its own queue and ports; then ``overrides``), its services not started
    yet (from the checkout ``code`` when given); stopped and removed on leaving."""
    run = uuid.uuid4().hex[:8]
    settings = Settings.from_env(
        db_schema=f"{prefix}_{run}",
        queue=f"{prefix}.{run}.events",
        ingest_port=free_port(),
        read_port=free_port(),
        consumer_port=0,
        log_level="WARNING",
        **overrides,
    )
    if code is None:
        await dbschema.ensure(settings)
    # Another checkout's services make their own schema as they start: made here, it would be
    # this checkout's, which that code may only reach through compatibility paths (schema 6's
    # view, for one) that the bench would then measure instead of the code.
    logdir = Path(tempfile.mkdtemp(prefix=f"pubsub-{prefix}-"))
    stack = Supervisor(settings, logdir=logdir, consumers=consumers, code=code)
    try:
        yield stack
    finally:
        stack.stop_all()
        await dbschema.drop(settings)
        async with await failover.connect_once(settings.amqp_urls) as conn:
            await topology.delete(await conn.channel(), settings)
        shutil.rmtree(logdir, ignore_errors=True)
