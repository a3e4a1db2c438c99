"""What expired events take from the counts: the statements' common part, for the sweep's
partitions (:mod:`consumer.retention`) and a tenant's own retention
(:mod:`consumer.tenant_expiry`)."""

from __future__ import annotations

# Common table expressions, after one named ``totals`` with the columns ``tenant, topic,
# minute, n`` (events expired): they add ``n`` to the counters' ``expired`` and take it from
# the volume per minute, on the sweep's rows (``%(shard)s``), in key order as consumers lock.
UNCOUNT = """
counted AS (
    INSERT INTO counters AS c (tenant, shard, expired)
    SELECT tenant, %(shard)s, sum(n) FROM totals GROUP BY 1 ORDER BY 1
    ON CONFLICT (tenant, shard) DO UPDATE SET expired = c.expired + excluded.expired
), by_topic AS (
    INSERT INTO volume AS v (tenant, topic, minute, shard, n)
    SELECT tenant, topic COLLATE "C", minute, %(shard)s, -n FROM totals ORDER BY 1, 2, 3
    ON CONFLICT (tenant, topic, minute, shard) DO UPDATE SET n = v.n + excluded.n
), in_all AS (
    INSERT INTO volume_total AS v (tenant, minute, shard, n)
    SELECT tenant, minute, %(shard)s, -sum(n) FROM totals GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (tenant, minute, shard) DO UPDATE SET n = v.n + excluded.n
)"""
