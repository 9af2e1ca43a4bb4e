"""The PostgreSQL store's larger queries: state intervals and time in state.

The same algorithm as the SQLite store's (:mod:`.sqlite`), in PostgreSQL's dialect: each
state row lasts until the next by (ts, id) (``lead()``), clipped to the window with
``greatest``/``least``; the last row at or before a window's start is carried in; time no
row covers (before a machine's first data) is OFFLINE. Many windows are passed as four
parallel arrays (``unnest``), one ``LATERAL`` subquery each, so every window is an index
range scan of ``state_changes (machine_key, ts, id)`` on the partitions it touches.
"""

from __future__ import annotations

from typing import Final

#: ``$1`` machine key, ``$2`` start, ``$3`` end (already clipped to now), ``$4`` heartbeat
#: gap (-1 = none): hub OFFLINE rows voided by the same rule as in ``TIME_IN_STATE_SQL``.
_INTERVALS_SQL: Final = """
WITH seg AS (
    SELECT id, state, detail, ts,
           lead(ts) OVER (ORDER BY ts, id) AS next_ts
    FROM state_changes c
    WHERE machine_key = $1
      AND ts < $3
      AND ts >= coalesce(
            (SELECT max(x.ts) FROM state_changes x
             WHERE x.machine_key = $1 AND x.ts <= $2 AND NOT {void_x}), $2)
      AND NOT {void_c}
),
clipped AS (
    SELECT id, state, detail, ts,
           greatest(ts, $2) AS f,
           least(coalesce(next_ts, $3), $3) AS t
    FROM seg
    WHERE coalesce(next_ts, $3) > $2
)
SELECT 'OFFLINE' AS state, 'no data' AS detail, $2::bigint AS f,
       coalesce((SELECT min(f) FROM clipped), $3) AS t, -1::bigint AS ts, -1::bigint AS id
WHERE coalesce((SELECT min(f) FROM clipped), $3) > $2
UNION ALL
SELECT state, detail, f, t, ts, id FROM clipped WHERE t > f
ORDER BY ts, id
"""

#: A hub-sourced OFFLINE row is void when the agent's own rows around it are at most ``$5``
#: ms apart (it kept observing; a replay proved it) and the next one is not OFFLINE (a
#: restarted agent's ``agent_started``: it saw nothing in between). A negative ``$5``
#: never voids.
_VOID_SQL: Final = """
    ({x}.source = 'hub' AND {x}.state = 'OFFLINE' AND $5::bigint >= 0 AND coalesce(
     (SELECT n.state <> 'OFFLINE' AND n.ts - (
        SELECT p.ts FROM state_changes p WHERE p.machine_key = {x}.machine_key
        AND p.ts <= {x}.ts AND p.source = 'agent' ORDER BY p.ts DESC LIMIT 1) <= $5::bigint
      FROM state_changes n WHERE n.machine_key = {x}.machine_key
        AND n.ts > {x}.ts AND n.source = 'agent' ORDER BY n.ts LIMIT 1),
     false))
"""

INTERVALS_SQL: Final = _INTERVALS_SQL.replace(
    "{void_x}", _VOID_SQL.replace("{x}", "x").replace("$5", "$4")
).replace("{void_c}", _VOID_SQL.replace("{x}", "c").replace("$5", "$4"))  # constants only

#: ``$1`` window ids, ``$2`` machine keys, ``$3`` starts, ``$4`` ends (clipped to now),
#: ``$5`` heartbeat gap (-1 = none). One row per (window, state) with its milliseconds; the
#: caller adds the uncovered rest of each window as OFFLINE. Nothing is cached: a late row
#: changes every window it falls in on the next query.
TIME_IN_STATE_SQL: Final = """
WITH w AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[]) AS w(wid, key, s, e)
),
lo AS MATERIALIZED (
    SELECT w.wid, w.key, w.s, w.e,
           coalesce((SELECT x.ts FROM state_changes x
                     WHERE x.machine_key = w.key AND x.ts <= w.s AND NOT {void_x}
                     ORDER BY x.ts DESC LIMIT 1), w.s) AS lo
    FROM w
)
SELECT lo.wid, seg.state,
       sum(greatest(0, least(coalesce(seg.next_ts, lo.e), lo.e) - greatest(seg.ts, lo.s)))::bigint
FROM lo CROSS JOIN LATERAL (
    SELECT c.state, c.ts, lead(c.ts) OVER (ORDER BY c.ts, c.id) AS next_ts
    FROM state_changes c
    WHERE c.machine_key = lo.key AND c.ts >= lo.lo AND c.ts < lo.e AND NOT {void_c}
) seg
GROUP BY lo.wid, seg.state
""".replace("{void_x}", _VOID_SQL.replace("{x}", "x")).replace(
    "{void_c}", _VOID_SQL.replace("{x}", "c")
)  # only constant SQL fragments are joined; every value is bound

#: The first seq after ``$3`` whose successor is missing, if ``$3 + 1`` is stored: the
#: contiguous run after the watermark ends there. One ordered index scan from ``$3`` that
#: stops at the first gap (``lead``), rather than an anti-join per key (which the planner,
#: with fresh statistics on a growing table, ran as a scan of the whole stream per key).
CONTIGUOUS_RUN_SQL: Final = """
SELECT run.seq FROM (
    SELECT seq, lead(seq) OVER (ORDER BY seq) AS next_seq
    FROM record_keys
    WHERE agent = $1 AND stream = $2 AND seq > $3
) run
WHERE run.next_seq IS DISTINCT FROM run.seq + 1
  AND EXISTS (SELECT 1 FROM record_keys f WHERE f.agent = $1 AND f.stream = $2 AND f.seq = $3 + 1)
ORDER BY run.seq LIMIT 1
"""

MACHINES_SQL: Final = """
SELECT m.key, m.agent, m.machine, m.site, m.name, m.kind, m.protocol, m.firmware,
       m.last_seen, m.meta::text, m.state_body::text, m.state_ts,
       s.ts, s.state, s.detail, s.source
FROM machines m LEFT JOIN LATERAL (
    SELECT ts, state, detail, source FROM state_changes
    WHERE machine_key = m.key ORDER BY ts DESC, id DESC LIMIT 1
) s ON true
ORDER BY m.key COLLATE "C"
"""

INSERT_RECORD_KEYS_SQL: Final = """
INSERT INTO record_keys (agent, stream, seq)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
ON CONFLICT DO NOTHING
RETURNING agent, stream, seq
"""

INSERT_RECORDS_SQL: Final = """
INSERT INTO records (agent, stream, seq, machine, kind, ts, mono, received_at, replay, body,
                     clock, agent_ts)
SELECT a, s, q, m, k, t, mo, r, rp, b::jsonb, c, at
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::bigint[],
            $7::bigint[], $8::bigint[], $9::boolean[], $10::text[], $11::text[], $12::bigint[])
     AS u(a, s, q, m, k, t, mo, r, rp, b, c, at)
"""
