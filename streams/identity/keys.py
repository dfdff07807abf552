"""The identity index in the sync store: every record's match keys, looked up by index, decided under a lock.

Each record of a profile's table (both systems) has rows in ``sync.identity_keys``: its normalised
exact keys (``exact1``, ``exact2``, ...) and its normalised name (``name``); a record still without
a counterpart also has the bigrams of its fuzzy name key, one array in ``sync.identity_grams``
under a GIN index; ``sync.identity_records`` keeps what matching needs of it. A new record
is matched with a handful of index look-ups, never by reading a whole table; and its decision is
taken under transaction-scoped advisory locks on its exact and name keys, so two records sharing a
key (twins on both systems, duplicates on one) are decided one after the other, each seeing the
other, whatever the batching or the number of workers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from streams.identity.match import Record, bigrams

DDL = """
CREATE TABLE IF NOT EXISTS sync.identity_records (
  entity    text NOT NULL,
  system    text NOT NULL,
  source_id text NOT NULL,
  keys      text[] NOT NULL,      -- the exact keys as the record has them, in profile order
  name      text,
  PRIMARY KEY (entity, system, source_id)
);
CREATE TABLE IF NOT EXISTS sync.identity_keys (
  entity    text NOT NULL,
  kind      text NOT NULL,        -- exact1, exact2, ... | name
  value     text NOT NULL,
  system    text NOT NULL,
  source_id text NOT NULL,
  PRIMARY KEY (entity, kind, value, system, source_id)
);
CREATE INDEX IF NOT EXISTS identity_keys_record ON sync.identity_keys (entity, system, source_id);
-- The name bigrams of the records without a counterpart (the fuzzy candidates): one row each.
CREATE TABLE IF NOT EXISTS sync.identity_grams (
  entity    text NOT NULL,
  system    text NOT NULL,
  source_id text NOT NULL,
  grams     text[] NOT NULL,
  PRIMARY KEY (entity, system, source_id)
);
CREATE INDEX IF NOT EXISTS identity_grams_grams ON sync.identity_grams USING gin (grams) WITH (fastupdate = off);
-- Bigrams were rows of identity_keys (kind 'gram') before 2026-12: moved here.
INSERT INTO sync.identity_grams (entity, system, source_id, grams)
  SELECT entity, system, source_id, array_agg(value ORDER BY value) FROM sync.identity_keys WHERE kind = 'gram'
  GROUP BY entity, system, source_id ON CONFLICT DO NOTHING;
DELETE FROM sync.identity_keys WHERE kind = 'gram';
-- Records without a counterpart, to be created on the other system once no twin turned up.
CREATE TABLE IF NOT EXISTS sync.pending_creates (
  entity    text NOT NULL,
  global_id uuid NOT NULL,
  system    text NOT NULL,
  source_id text NOT NULL,
  due_at    timestamptz NOT NULL,
  PRIMARY KEY (entity, global_id)
);
CREATE INDEX IF NOT EXISTS pending_creates_due ON sync.pending_creates (due_at);
-- The other system's raw-topic end offsets when the hold passed: created once the workers read that far.
ALTER TABLE sync.pending_creates ADD COLUMN IF NOT EXISTS peer_ends jsonb;
"""
FUZZY_CANDIDATES = 50  # records sharing the most bigrams of a name, scored by similarity
CHUNK = 5_000  # records indexed per statement


def match_keys(rec: Record) -> list[tuple[str, str]]:
    """``(kind, value)`` of a record: its exact keys and its name."""
    out = [(f"exact{i + 1}", key) for i, key in enumerate(rec.exact) if key]
    name = rec.normal_name
    if name:
        out.append(("name", name))
    return out


def name_grams(rec: Record) -> list[str]:
    """The bigrams of a record's fuzzy name key, sorted."""
    return sorted(bigrams(rec.fuzzy))


def lock_ids(entity: str, recs: Iterable[Record]) -> list[int]:
    """Advisory-lock ids of the records' exact and name keys (sorted: locks taken in one order never deadlock)."""
    ids = set()
    for rec in recs:
        for kind, value in match_keys(rec):
            digest = hashlib.blake2b(f"{entity}|{kind}|{value}".encode(), digest_size=8).digest()
            ids.add(int.from_bytes(digest, "big", signed=True))
    return sorted(ids)


def _joined(keys: Sequence[str | None]) -> str:
    """A record's exact keys in one text, as ``identity_records.keys`` is made from (``string_to_array``)."""
    return chr(31).join(k or "" for k in keys)


def _stored(keys: Sequence[str | None]) -> tuple[str, ...]:
    """A record's exact keys as ``identity_records.keys`` holds them."""
    joined = _joined(keys)
    return tuple(joined.split(chr(31))) if joined else ()


def _grams_columns(recs: Sequence[Record]) -> tuple[list[str], list[str], list[str]]:
    """Systems, source ids and bigrams (joined as in :func:`_joined`) of records, for ``unnest``."""
    return [r.system for r in recs], [r.source_id for r in recs], [chr(31).join(name_grams(r)) for r in recs]


def _not_merged(system: str) -> sql.Composable:
    """``k.source_id`` (a record of ``system``) was not merged into another by a person."""
    return sql.SQL("NOT EXISTS (SELECT 1 FROM sync.xref m WHERE m.entity = k.entity AND m.{} = k.source_id"
                   " AND m.linked_by = 'merged')").format(sql.Identifier(f"{system}_id"))


class IdentityKeys:
    """Index access for one entity's records (the caller owns the transaction)."""

    def __init__(self, entity: str) -> None:
        self.entity = entity

    def lock(self, conn: psycopg.Connection[Any], recs: Iterable[Record]) -> None:
        """Serialise decisions on these records' keys until the transaction ends."""
        ids = lock_ids(self.entity, recs)
        if ids:  # one statement: the array's order is the locking order
            conn.execute("SELECT pg_advisory_xact_lock(x) FROM unnest(%s::bigint[]) AS x", (ids,)).fetchall()

    def put(self, conn: psycopg.Connection[Any], recs: Sequence[Record],
            linked: Collection[tuple[str, str]] = ()) -> None:
        """Index the records (their earlier keys replaced): three statements per :data:`CHUNK` of them.

        Records in ``linked`` (``(system, source id)`` of records with a counterpart) get no name
        bigrams: only a free record can be a fuzzy candidate, so the bigram index holds the few
        records still without a counterpart, not every record (a common bigram would else match a
        good part of the table).
        """
        recs = list({(r.system, r.source_id): r for r in recs}.values())  # the last of each record
        for start in range(0, len(recs), CHUNK):  # an initial sync's 100,000 records in one go: ~1 GB of rows
            chunk = recs[start:start + CHUNK]
            systems, ids = [r.system for r in chunk], [r.source_id for r in chunk]
            conn.execute("WITH r AS (SELECT * FROM unnest(%b::text[], %b::text[]) AS r(s, i)),"
                         " g AS (DELETE FROM sync.identity_grams g USING r"
                         " WHERE g.entity = %s AND g.system = r.s AND g.source_id = r.i)"
                         " DELETE FROM sync.identity_keys k USING r"
                         " WHERE k.entity = %s AND k.system = r.s AND k.source_id = r.i",
                         (systems, ids, self.entity, self.entity))
            conn.execute("INSERT INTO sync.identity_records (entity, system, source_id, keys, name)"
                         " SELECT %s, s, i, string_to_array(k, chr(31)), n"
                         " FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[]) AS r(s, i, k, n)"
                         " ON CONFLICT (entity, system, source_id) DO UPDATE SET keys = EXCLUDED.keys,"
                         " name = EXCLUDED.name",
                         (self.entity, systems, ids, [_joined(r.keys) for r in chunk], [r.name for r in chunk]))
            rows = [(kind, value, r.system, r.source_id) for r in chunk for kind, value in match_keys(r)]
            free = [r for r in chunk if (r.system, r.source_id) not in linked and r.fuzzy]
            conn.execute("WITH g AS (INSERT INTO sync.identity_grams (entity, system, source_id, grams)"
                         " SELECT %s, s, i, string_to_array(g, chr(31))"
                         " FROM unnest(%b::text[], %b::text[], %b::text[]) AS r(s, i, g) ON CONFLICT DO NOTHING)"
                         " INSERT INTO sync.identity_keys (entity, kind, value, system, source_id)"
                         " SELECT %s, k, v, s, i FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[])"
                         " AS r(k, v, s, i) ON CONFLICT DO NOTHING",
                         (self.entity, *_grams_columns(free), self.entity,
                          *(map(list, zip(*rows, strict=True)) if rows else ([], [], [], []))))

    def changed(self, conn: psycopg.Connection[Any], recs: Sequence[Record]) -> list[Record]:
        """Those of the records the index does not hold as they are (new, or with other keys or name): one look-up.

        Indexing a record again as it is would delete and insert the same rows (a dozen each).
        """
        recs = list({(r.system, r.source_id): r for r in recs}.values())
        if not recs:
            return []
        rows = conn.execute("SELECT r.system, r.source_id, r.keys, r.name FROM sync.identity_records r"
                            " JOIN unnest(%b::text[], %b::text[]) AS q(s, i) ON r.system = q.s AND r.source_id = q.i"
                            " WHERE r.entity = %s",
                            ([r.system for r in recs], [r.source_id for r in recs], self.entity)).fetchall()
        held = {(s, i): (tuple(keys), name) for s, i, keys, name in rows}
        return [r for r in recs if held.get((r.system, r.source_id)) != (_stored(r.keys), r.name)]

    def add_grams(self, conn: psycopg.Connection[Any], recs: Sequence[Record]) -> None:
        """The name bigrams of records indexed without them (:meth:`put` with ``linked``) that are free now."""
        recs = [r for r in recs if r.fuzzy]
        for start in range(0, len(recs), CHUNK):  # binary arrays: psycopg quotes text ones element by element
            conn.execute("INSERT INTO sync.identity_grams (entity, system, source_id, grams)"
                         " SELECT %s, s, i, string_to_array(g, chr(31))"
                         " FROM unnest(%b::text[], %b::text[], %b::text[]) AS r(s, i, g)"
                         " ON CONFLICT (entity, system, source_id) DO UPDATE SET grams = EXCLUDED.grams",
                         (self.entity, *_grams_columns(recs[start:start + CHUNK])))

    def drop_grams(self, conn: psycopg.Connection[Any], records: Sequence[tuple[str, str]]) -> None:
        """These ``(system, source id)`` now have a counterpart: no longer fuzzy candidates."""
        if records:
            conn.execute("DELETE FROM sync.identity_grams g USING unnest(%b::text[], %b::text[]) AS r(s, i)"
                         " WHERE g.entity = %s AND g.system = r.s AND g.source_id = r.i",
                         ([s for s, _ in records], [i for _, i in records], self.entity))

    def reindex(self, conn: psycopg.Connection[Any], records: Sequence[tuple[str, str]]) -> None:
        """Index these ``(system, source id)`` again as free records (a person unlinked them)."""
        rows = conn.execute("SELECT r.system, r.source_id, r.keys, r.name FROM sync.identity_records r"
                            " JOIN unnest(%s::text[], %s::text[]) AS q(s, i) ON r.system = q.s AND r.source_id = q.i"
                            " WHERE r.entity = %s",
                            ([s for s, _ in records], [i for _, i in records], self.entity)).fetchall()
        self.put(conn, [Record(s, i, tuple(k or None for k in keys), name) for s, i, keys, name in rows])

    def indexed(self, conn: psycopg.Connection[Any]) -> set[tuple[str, str]]:
        """``(system, source id)`` of every record in the index."""
        rows = conn.execute("SELECT system, source_id FROM sync.identity_records WHERE entity = %s",
                            (self.entity,)).fetchall()
        return {(str(r[0]), str(r[1])) for r in rows}

    def remove(self, conn: psycopg.Connection[Any], system: str, source_id: str) -> None:
        """Forget a deleted record."""
        self.drop_grams(conn, [(system, source_id)])
        conn.execute("DELETE FROM sync.identity_keys WHERE entity = %s AND system = %s AND source_id = %s",
                     (self.entity, system, source_id))
        conn.execute("DELETE FROM sync.identity_records WHERE entity = %s AND system = %s AND source_id = %s",
                     (self.entity, system, source_id))

    def sharing(self, conn: psycopg.Connection[Any], rec: Record, system: str) -> list[str]:
        """Records of ``system`` (other than ``rec``, not merged away) sharing one of its exact keys or its name."""
        keys = match_keys(rec)
        if not keys:
            return []
        rows = conn.execute(sql.SQL(
            "SELECT DISTINCT k.source_id FROM sync.identity_keys k JOIN unnest(%s::text[], %s::text[]) AS q(kind, v)"
            " ON k.kind = q.kind AND k.value = q.v WHERE k.entity = %s AND k.system = %s"
            " AND NOT (k.system = %s AND k.source_id = %s) AND {} ORDER BY 1").format(_not_merged(system)),
            ([k for k, _ in keys], [v for _, v in keys], self.entity, system, rec.system, rec.source_id),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def alone(self, conn: psycopg.Connection[Any], recs: Sequence[Record]) -> list[Record]:
        """Of these records (of one system), those sharing nothing with any other indexed record: one statement.

        Nothing means no exact key or name shared with another record of either system (a duplicate,
        a twin) and no name bigram with a record of the other system (a fuzzy candidate): such a
        record's decision can only be that it stands alone. A record with anything shared, even with
        a record that cannot be its match (linked, merged), is not among them: decide it one by one.
        """
        if not recs:
            return []
        system = recs[0].system
        peer = "erp" if system == "crm" else "crm"
        probes = [(r.source_id, kind, value) for r in recs for kind, value in match_keys(r)]
        grams = {r.source_id: name_grams(r) for r in recs}
        every_gram = sorted({g for gs in grams.values() for g in gs})
        if not probes and not every_gram:
            return list(recs)
        # Which of the chunk's bigrams the other system's free records have: one GIN look-up per bigram
        # (per record, a bigram common to many would be read again for each record having it).
        rows = conn.execute(
            "SELECT q.i, NULL FROM unnest(%b::text[], %b::text[], %b::text[]) AS q(i, kind, v)"
            " WHERE EXISTS (SELECT 1 FROM sync.identity_keys k WHERE k.entity = %s AND k.kind = q.kind"
            " AND k.value = q.v AND (k.system = %s OR k.source_id <> q.i))"
            " UNION ALL SELECT NULL, u.x FROM unnest(%b::text[]) AS u(x) WHERE EXISTS (SELECT 1"
            " FROM sync.identity_grams g WHERE g.entity = %s AND g.system = %s AND g.grams @> ARRAY[u.x])",
            ([i for i, _, _ in probes], [k for _, k, _ in probes], [v for _, _, v in probes],
             self.entity, peer, every_gram, self.entity, peer)).fetchall()
        shared = {str(i) for i, _ in rows if i is not None}
        shared_grams = {str(g) for _, g in rows if g is not None}
        return [r for r in recs if r.source_id not in shared and shared_grams.isdisjoint(grams[r.source_id])]

    def candidates(self, conn: psycopg.Connection[Any], rec: Record) -> list[Record]:
        """Records of the other system not linked to a record of ``rec``'s system, sharing a key or bigrams with it.

        Three index look-ups: exact and name keys; the records sharing the most name bigrams; their details.
        """
        peer = "erp" if rec.system == "crm" else "crm"
        # A scalar look-up of the record's one cross-reference row, not NOT EXISTS: that may be planned
        # as an anti-join hashing the whole cross-reference when many records share a common bigram.
        free = sql.SQL("(SELECT x.{} IS NULL AND x.linked_by <> 'merged' FROM sync.xref x"
                       " WHERE x.entity = k.entity AND x.{} = k.source_id) IS NOT FALSE").format(
            sql.Identifier(f"{rec.system}_id"), sql.Identifier(f"{peer}_id"))
        keyed = match_keys(rec)
        grams = name_grams(rec)
        found: set[str] = set()
        if keyed:
            rows = conn.execute(sql.SQL(
                "SELECT DISTINCT k.source_id FROM sync.identity_keys k"
                " JOIN unnest(%s::text[], %s::text[]) AS q(kind, v) ON k.kind = q.kind AND k.value = q.v"
                " WHERE k.entity = %s AND k.system = %s AND {}").format(free),
                ([k for k, _ in keyed], [v for _, v in keyed], self.entity, peer)).fetchall()
            found |= {str(r[0]) for r in rows}
        if grams:
            rows = conn.execute(sql.SQL(
                "SELECT k.source_id FROM sync.identity_grams k WHERE k.entity = %s AND k.system = %s"
                " AND k.grams && %s::text[] AND {} ORDER BY cardinality(ARRAY(SELECT unnest(k.grams)"
                " INTERSECT SELECT unnest(%s::text[]))) DESC, k.source_id LIMIT %s").format(free),
                (self.entity, peer, grams, grams, FUZZY_CANDIDATES)).fetchall()
            found |= {str(r[0]) for r in rows}
        if not found:
            return []
        rows = conn.execute("SELECT source_id, keys, name FROM sync.identity_records WHERE entity = %s"
                            " AND system = %s AND source_id = ANY(%s)", (self.entity, peer, sorted(found))).fetchall()
        return [Record(peer, str(r[0]), tuple(k or None for k in r[1]), r[2]) for r in rows]

    def pend_creates(self, conn: psycopg.Connection[Any], records: Sequence[tuple[str, str, str]],
                     hold_s: float) -> None:
        """Create these ``(global id, system, source id)`` on the other system after ``hold_s`` seconds.

        Unless a twin turns up meanwhile; one statement.
        """
        if not records:
            return
        conn.execute("INSERT INTO sync.pending_creates (entity, global_id, system, source_id, due_at)"
                     " SELECT %s, g, s, i, now() + make_interval(secs => %s)"
                     " FROM unnest(%s::uuid[], %s::text[], %s::text[]) AS r(g, s, i) ON CONFLICT DO NOTHING",
                     (self.entity, hold_s, *map(list, zip(*records, strict=True))))
