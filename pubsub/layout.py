"""How events lie in PostgreSQL (schema 8): blocks in time partitions, and one key per event.

- **A block** holds the events of one topic from one consumer batch (or several, once merged:
  see :mod:`consumer.merge`) whose timestamps lie in
  one hour (``BLOCK_SPAN``, aligned), at most ``BLOCK_EVENTS`` events and about
  ``BLOCK_BYTES`` of text, one line per event, sorted by ``(ts, event_id)``. The hour bounds
  what a block can overlap: a batch of events with timestamps scattered over years makes blocks
  of one event, not one block that every page must open. The lines are one ``text`` value,
  which TOAST compresses with lz4 once it passes about 2 kB. Beside it, what reads need to
  skip the block without opening it: the topic, the first and last timestamps, the first and
  last storing transactions (the live stream's order), the event count, and the latest
  receive time (the partition key).
- **A key** per event, ``(tenant, topic id, event_key(event_id))``, decides deduplication
  (``event_key``: a UUID in canonical text as its 16 bytes, any other id as its text, a leading
  byte telling them apart, so that no two ids share a key): consumers insert the keys of a
  batch with ``ON CONFLICT DO NOTHING`` and build blocks from the ones that were new, in the
  same transaction. A key points to its block, so one event is one
  probe of the key's index and one block. Keys are not partitioned by time: an event sent again
  a day later meets its key whichever partition its first copy lies in.
- **Partitions** of ``blocks`` span a day, an hour or a minute of receive time (by the
  retention, see :func:`span`). The retention sweep drops a partition once all of it is past
  the horizon, with the keys of its events: it never deletes events one by one.
- **The view** ``events`` shows every stored event as a row, with the columns the table of
  schema 5 had. Grafana and ad hoc SQL read it; the read API reads blocks itself
  (:func:`events_of`) so that it opens only the blocks a page needs. An ``INSERT`` into the
  view stores an event as a block of its own (for imports and tests; consumers insert in bulk).

Every block and key leads with its tenant's id (see :mod:`pubsub.tenants`; ``0`` is ``default``).

A line is ``event_id TAB ts TAB source TAB received_at TAB txid TAB payload``: names hold no
control character and the payload is JSON text with its control characters escaped, so neither
tab nor newline occurs inside a field. ``txid`` is the transaction that stored the event (the
live stream's order): every event keeps its own, so that blocks can be merged later without
moving an event in the stream.
"""

from __future__ import annotations

import re

# The only tenant for now; every key and block carries it, so that tenants come without
# another rewrite.
TENANT = 0

# A block closes after this many events or about this many bytes of lines, whichever first: a
# lookup by id opens one block, so the block bounds its cost.
BLOCK_EVENTS = 256
BLOCK_BYTES = 64 * 1024
# A block's timestamps lie within one aligned span of this length (see BLOCK_BIN): so
# ``min_ts > max_ts - BLOCK_SPAN`` always, which bounds an index scan by either column.
BLOCK_SPAN = "1 hour"
BLOCK_BIN = f"date_bin('{BLOCK_SPAN}', {{column}}, '2000-01-01 00:00:00+00')"
# Blocks of fewer events are merged with their neighbours (see consumer.merge). Merged blocks
# of this size or more are left alone, which bounds how often merges rewrite an event.
SMALL_BLOCK = BLOCK_EVENTS // 4


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def event_key(event_id: str) -> bytes:
    """The key of an event id: what the SQL function ``event_key`` makes of it (the
    consumers compute it here, where it costs PostgreSQL nothing; ``tests/test_blocks.py``
    holds the two to the same answers)."""
    if len(event_id) == 36 and _UUID.fullmatch(event_id):
        return b"\x01" + bytes.fromhex(event_id.replace("-", ""))
    return b"\x02" + event_id.encode()


def span(retention_seconds: float | None) -> str:
    """The span of a new partition, as a PostgreSQL interval: a day, or shorter when the
    retention is short, so that what the sweep keeps past the horizon stays within a small
    part of it (an event is removed between ``retention`` and ``retention + span`` after it was
    received)."""
    if retention_seconds is None or retention_seconds >= 2 * 86400:
        return "1 day"
    if retention_seconds >= 2 * 3600:
        return "1 hour"
    return "1 minute"


# One block's events as rows; ``b`` is the block.
_SPLIT = """LATERAL (SELECT string_to_array(line, E'\\t') AS f
                 FROM string_to_table(b.events, E'\\n') AS line) AS split"""


def events_of(blocks_where: str) -> str:
    """A FROM item named ``events``: the events of the blocks that meet ``blocks_where`` (a
    condition on the blocks' columns), with the columns ``topic, event_id, ts, source,
    payload`` (JSON text, as stored), ``received_at, txid``."""
    return f"""(SELECT b.topic, f[1] AS event_id, f[2]::timestamptz AS ts, f[3] AS source,
               f[6] AS payload, f[4]::timestamptz AS received_at, f[5]::xid8 AS txid
        FROM blocks b, {_SPLIT}
        WHERE {blocks_where}) AS events"""


# Schema 6. ``{schema}`` is the schema's name (the functions fix their search path to it).
DDL = """
ALTER TABLE topics ADD COLUMN IF NOT EXISTS id integer GENERATED BY DEFAULT AS IDENTITY;
CREATE UNIQUE INDEX IF NOT EXISTS topics_id ON topics (id);

CREATE SEQUENCE IF NOT EXISTS block_ids AS bigint;

CREATE TABLE IF NOT EXISTS blocks (
    tenant    integer     NOT NULL DEFAULT 0,
    topic     text        NOT NULL,
    id        bigint      NOT NULL,
    -- The latest receive time of its events: the partition key.
    received  timestamptz NOT NULL,
    min_ts    timestamptz NOT NULL,
    max_ts    timestamptz NOT NULL,
    -- The event ids of its first and last events in (ts, event_id) order, by the database's
    -- collation, as reads order them: with min_ts and max_ts, the first and last keys of a
    -- page's order, so that events with equal timestamps need not open every block of them.
    first_id  text        NOT NULL,
    last_id   text        NOT NULL,
    n         integer     NOT NULL,
    -- The first and last transactions that stored its events: one, until a merge (see
    -- consumer.merge) joins blocks of several.
    txid      xid8        NOT NULL DEFAULT pg_current_xact_id(),
    stored_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    events    text        COMPRESSION lz4 NOT NULL,
    last_txid xid8        NOT NULL DEFAULT pg_current_xact_id()
) PARTITION BY RANGE (received);
CREATE INDEX IF NOT EXISTS blocks_id ON blocks (id);
CREATE INDEX IF NOT EXISTS blocks_topic_min_ts ON blocks (tenant, topic, min_ts);
CREATE INDEX IF NOT EXISTS blocks_min_ts ON blocks (tenant, min_ts);
-- By last timestamp, then first: a page's blocks overlap a stretch of time, which bounds the
-- one column by the range and the other by a span; with both in the index, the blocks of the
-- span that end after the stretch or start before it are passed over in the index instead of
-- being read from the table (an hour of one-event blocks is thousands of them).
CREATE INDEX IF NOT EXISTS blocks_topic_ends ON blocks (tenant, topic, max_ts, min_ts);
CREATE INDEX IF NOT EXISTS blocks_ends ON blocks (tenant, max_ts, min_ts);
CREATE INDEX IF NOT EXISTS blocks_txid ON blocks (txid);
-- Merged blocks by their last transaction: a stream positioned inside a merged block's range
-- finds it here (the others, by txid).
CREATE INDEX IF NOT EXISTS blocks_merged ON blocks (last_txid) WHERE last_txid <> txid;
-- Blocks small enough to merge, by when they were stored: the merge looks only at recent ones.
CREATE INDEX IF NOT EXISTS blocks_small ON blocks (stored_at) WHERE n < SMALL_BLOCK;
CREATE INDEX IF NOT EXISTS blocks_received ON blocks (received);

-- An event id as its key: a UUID in its canonical text (what most publishers send) as its
-- 16 bytes, any other id as its text; the leading byte tells them apart, so no two ids share a
-- key. A UUID's key is 18 bytes in a row and in the index, against 37 as text.
CREATE OR REPLACE FUNCTION event_key(event_id text) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN CASE WHEN event_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
            THEN '\\x01'::bytea || uuid_send(event_id::uuid)
            ELSE '\\x02'::bytea || textsend(event_id) END;

CREATE TABLE IF NOT EXISTS keys (
    tenant integer NOT NULL,
    topic  integer NOT NULL,
    block  bigint  NOT NULL,
    key    bytea   NOT NULL,
    PRIMARY KEY (tenant, topic, key)
);

-- The partitions of blocks, by their bounds (what the catalog holds as text).
CREATE TABLE IF NOT EXISTS partitions (
    name     text        PRIMARY KEY,
    lo       timestamptz NOT NULL,
    hi       timestamptz NOT NULL,
    -- Detached by the retention sweep: its events are gone, its keys going.
    detached boolean     NOT NULL DEFAULT false
);

-- A partition holding receive time ``at``, made if there is none: aligned to ``span``, cut
-- short where a partition of another span is in the way. SECURITY DEFINER, so that consumers
-- need no right to create tables, only to run this.
CREATE OR REPLACE FUNCTION add_partition(at timestamptz, span interval)
RETURNS TABLE (lo timestamptz, hi timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {schema}, pg_temp AS $$
DECLARE
    a timestamptz := date_bin(span, at, '2000-01-01 00:00:00+00');
    b timestamptz;
    part text;
BEGIN
    PERFORM pg_advisory_xact_lock(1886680168);
    RETURN QUERY SELECT p.lo, p.hi FROM partitions p
                 WHERE p.lo <= at AND at < p.hi AND NOT p.detached;
    IF FOUND THEN
        RETURN;
    END IF;
    b := a + span;
    -- A detached partition's range is free again.
    a := greatest(a, (SELECT max(p.hi) FROM partitions p WHERE p.hi <= at AND NOT p.detached));
    b := least(b, (SELECT min(p.lo) FROM partitions p WHERE p.lo > at AND NOT p.detached));
    part := 'blocks_' || to_char(a AT TIME ZONE 'UTC', 'YYYYMMDD"t"HH24MISS')
            || '_' || nextval('block_ids');
    -- Made apart, then attached: CREATE TABLE ... PARTITION OF would lock out every reader and
    -- writer of blocks while it waits for the longest read to end, ATTACH PARTITION does not.
    EXECUTE format('CREATE TABLE %I (LIKE blocks INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
                   'INCLUDING STORAGE INCLUDING COMPRESSION)', part);
    EXECUTE format('ALTER TABLE blocks ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   part, a, b);
    INSERT INTO partitions (name, lo, hi) VALUES (part, a, b);
    RETURN QUERY SELECT a, b;
END $$;

-- The retention sweep's steps: detach a partition (its events leave every read at once), then,
-- once the keys of its events are gone, drop it.
CREATE OR REPLACE FUNCTION detach_partition(part text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {schema}, pg_temp AS $$
BEGIN
    UPDATE partitions SET detached = true WHERE name = part AND NOT detached;
    IF FOUND THEN
        EXECUTE format('ALTER TABLE blocks DETACH PARTITION %I', part);
    END IF;
END $$;
CREATE OR REPLACE FUNCTION drop_partition(part text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {schema}, pg_temp AS $$
BEGIN
    DELETE FROM partitions WHERE name = part AND detached;
    IF FOUND THEN
        EXECUTE format('DROP TABLE %I', part);
    END IF;
END $$;

CREATE OR REPLACE VIEW events AS
SELECT b.topic, f[1] AS event_id, f[2]::timestamptz AS ts, f[3] AS source, f[6]::json AS payload,
       f[4]::timestamptz AS received_at, b.stored_at, f[5]::xid8 AS txid, b.id AS block, b.tenant
FROM blocks b, {split};

-- An event inserted into the view: stored, as a block of its own, unless its key is known.
CREATE OR REPLACE FUNCTION insert_event() RETURNS trigger
LANGUAGE plpgsql SET search_path = {schema}, pg_temp AS $$
DECLARE
    topic_id integer;
    tenant_id integer := coalesce(NEW.tenant, 0);
    block_id bigint := nextval('block_ids');
    received timestamptz := coalesce(NEW.received_at, now());
    iso text := 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"';
BEGIN
    IF num_nulls(NEW.topic, NEW.event_id, NEW.ts, NEW.source, NEW.payload) > 0 THEN
        RAISE not_null_violation USING MESSAGE = 'an event needs topic, event_id, ts, source '
                                                 'and payload';
    END IF;
    IF concat(NEW.topic, NEW.event_id, NEW.source) ~ '[\x01-\x1f\x7f]' THEN
        RAISE check_violation USING MESSAGE = 'topic, event_id and source hold no control '
                                              'character';
    END IF;
    INSERT INTO topics (tenant, topic) VALUES (tenant_id, NEW.topic) ON CONFLICT DO NOTHING;
    SELECT id INTO topic_id FROM topics WHERE tenant = tenant_id AND topic = NEW.topic;
    INSERT INTO keys VALUES (tenant_id, topic_id, block_id, event_key(NEW.event_id))
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM add_partition(received, '1 day');
    INSERT INTO blocks (tenant, topic, id, received, min_ts, max_ts, first_id, last_id, n,
                        events)
    VALUES (tenant_id, NEW.topic, block_id, received, NEW.ts, NEW.ts, NEW.event_id, NEW.event_id,
            1,
            concat_ws(E'\\t', NEW.event_id, to_char(NEW.ts AT TIME ZONE 'UTC', iso), NEW.source,
                      to_char(received AT TIME ZONE 'UTC', iso), pg_current_xact_id()::text,
                      NEW.payload::text));
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS insert_event ON events;
CREATE TRIGGER insert_event INSTEAD OF INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION insert_event();
"""

# Only the roles that store events may make and drop partitions and number blocks: those that
# may insert into the ledger (compose's pubsub_app, see deploy/postgres/initdb/roles.psql). An
# upgrade grants it to them, so that a deployment's roles need nothing new by hand.
GRANT = """
REVOKE ALL ON FUNCTION add_partition(timestamptz, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION detach_partition(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION drop_partition(text) FROM PUBLIC;
DO $$
DECLARE
    writer text;
BEGIN
    FOR writer IN
        SELECT DISTINCT a.grantee::regrole::text
        FROM pg_class c, aclexplode(c.relacl) AS a
        WHERE c.oid = 'ledger'::regclass AND a.privilege_type = 'INSERT'
          AND a.grantee <> 0 AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT USAGE ON SEQUENCE block_ids TO %s', writer);
        EXECUTE format('GRANT EXECUTE ON FUNCTION add_partition(timestamptz, interval), '
                       'detach_partition(text), drop_partition(text) TO %s', writer);
    END LOOP;
END $$;
"""

# Rows of a table with the columns of schema 5's events table (``topic, event_id, ts, source,
# payload, received_at, stored_at, txid``) into blocks, by topic, day of receipt and hour, in
# chunks of BLOCK_EVENTS, with their keys: the upgrade from schema 5 moves its events table
# (renamed ``events_5`` first) so, and the storage bench fills big tables so. The rows must
# hold no two events of one key, and none stored already.
_MOVE = """
SELECT add_partition(d, '1 day')
FROM (SELECT DISTINCT date_bin('1 day', received_at, '2000-01-01 00:00:00+00') AS d
      FROM {source}) AS days;
INSERT INTO topics (topic) SELECT DISTINCT topic FROM {source} ON CONFLICT DO NOTHING;
CREATE TEMP TABLE moving ON COMMIT DROP AS
SELECT e.topic, e.event_id, e.ts, e.source, e.payload::text AS payload, e.received_at, e.txid,
       e.stored_at, p.lo AS part,
       BLOCK_BIN AS hour,
       (row_number() OVER (PARTITION BY e.topic, p.lo, BLOCK_BIN
                           ORDER BY e.ts, e.event_id COLLATE "C") - 1) / BLOCK_EVENTS AS chunk
FROM {source} e
JOIN partitions p ON e.received_at >= p.lo AND e.received_at < p.hi AND NOT p.detached;
CREATE TEMP TABLE moved ON COMMIT DROP AS
SELECT topic, part, hour, chunk, nextval('block_ids') AS block
FROM (SELECT DISTINCT topic, part, hour, chunk FROM moving) AS c;
INSERT INTO keys (tenant, topic, block, key)
SELECT 0, t.id, d.block, event_key(m.event_id)
FROM moving m JOIN moved d USING (topic, part, hour, chunk)
JOIN topics t ON t.tenant = 0 AND t.topic = m.topic;
INSERT INTO blocks (tenant, topic, id, received, min_ts, max_ts, first_id, last_id, n, txid,
                    last_txid, stored_at, events)
SELECT 0, m.topic, d.block, max(m.received_at), min(m.ts), max(m.ts),
       (array_agg(m.event_id ORDER BY m.ts, m.event_id))[1],
       (array_agg(m.event_id ORDER BY m.ts DESC, m.event_id DESC))[1], count(*),
       -- Events stored before schema 3 have no transaction: the stream starts after them.
       coalesce(min(m.txid), '0'::xid8), coalesce(max(m.txid), '0'::xid8), max(m.stored_at),
       string_agg(concat_ws(E'\\t', m.event_id,
                            to_char(m.ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                            m.source,
                            to_char(m.received_at AT TIME ZONE 'UTC',
                                    'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                            coalesce(m.txid, '0'::xid8)::text, m.payload),
                  E'\\n' ORDER BY m.ts, m.event_id COLLATE "C")
FROM moving m JOIN moved d USING (topic, part, hour, chunk)
GROUP BY m.topic, d.block;
""".replace("BLOCK_EVENTS", str(BLOCK_EVENTS)).replace("BLOCK_BIN", BLOCK_BIN.format(column="e.ts"))


def move(source: str) -> str:
    """The statements that move the rows of table ``source`` (a quoted name) into blocks."""
    return _MOVE.replace("{source}", source)


# Schema 6 to 7: a block's last transaction (schema 6 blocks held one each). Before DDL.
UPGRADE_6 = """
ALTER TABLE blocks ADD COLUMN IF NOT EXISTS last_txid xid8;
UPDATE blocks SET last_txid = txid WHERE last_txid IS NULL;
ALTER TABLE blocks ALTER COLUMN last_txid SET DEFAULT pg_current_xact_id(),
                   ALTER COLUMN last_txid SET NOT NULL;
"""

# From schema 7: the indexes by last timestamp alone give way to blocks_ends and
# blocks_topic_ends (made by DDL).
UPGRADE_7 = """
DROP INDEX IF EXISTS blocks_max_ts;
DROP INDEX IF EXISTS blocks_topic_max_ts;
"""


def ddl(schema: str) -> str:
    """:data:`DDL` for ``schema`` (a quoted identifier)."""
    return (
        DDL.replace("{schema}", schema)
        .replace("{split}", _SPLIT)
        .replace("SMALL_BLOCK", str(SMALL_BLOCK))
    )
