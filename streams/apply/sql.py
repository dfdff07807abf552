"""SQL for appliers, composed (never formatted) with ``psycopg.sql``. Pure: no connection needed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg import sql

from streams.mapping.writes import KeyFormat, Now

PROGRESS_DDL = """
CREATE SCHEMA IF NOT EXISTS sync_meta;
CREATE TABLE IF NOT EXISTS sync_meta.applier_progress (
  topic     text NOT NULL,
  partition int  NOT NULL,
  "offset"  bigint NOT NULL,
  PRIMARY KEY (topic, partition)
);
-- The topic's id when that offset was applied: a topic deleted and created again starts afresh.
ALTER TABLE sync_meta.applier_progress ADD COLUMN IF NOT EXISTS incarnation text NOT NULL DEFAULT '';
CREATE TABLE IF NOT EXISTS sync_meta.created (
  entity     text NOT NULL,
  global_id  text NOT NULL,
  key        text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (entity, global_id)
);
CREATE INDEX IF NOT EXISTS created_by_key ON sync_meta.created (entity, key);
-- The applier's transactions (32-bit ids, as change events carry them): their changes are the sync's echoes.
CREATE TABLE IF NOT EXISTS sync_meta.applied_tx (
  xid bigint      NOT NULL PRIMARY KEY,
  at  timestamptz NOT NULL DEFAULT now()
);
-- Each write's audit note, in the write's transaction, until the worker moved it to the sync store.
CREATE TABLE IF NOT EXISTS sync_meta.audit_outbox (
  id    bigserial PRIMARY KEY,
  entry jsonb NOT NULL
);
"""

PROGRESS_TABLES = ("sync_meta.applier_progress", "sync_meta.created", "sync_meta.applied_tx",
                   "sync_meta.audit_outbox")

APPLIED_INSERT = ("INSERT INTO sync_meta.applied_tx (xid) VALUES (txid_current() % 4294967296)"
                  " ON CONFLICT (xid) DO UPDATE SET at = now()")
APPLIED_SELECT = "SELECT xid FROM sync_meta.applied_tx WHERE xid = ANY(%s)"
APPLIED_PRUNE = "DELETE FROM sync_meta.applied_tx WHERE at < now() - interval '1 day'"

CREATED_LOOKUP = "SELECT key FROM sync_meta.created WHERE entity = %s AND global_id = %s"
CREATED_LOOKUP_NAMED = "SELECT key FROM sync_meta.created WHERE entity = %(entity)s AND global_id = %(gid)s"
CREATED_OF_ENTITY = "SELECT key, global_id FROM sync_meta.created WHERE entity = %(entity)s"
# Its own statement, not ``keys IS NULL OR key = ANY(keys)``: prepared after five runs, that one's
# generic plan could not look keys up in ``created_by_key`` and read the entity's every row each time.
CREATED_OF_KEYS = "SELECT key, global_id FROM sync_meta.created WHERE entity = %(entity)s AND key = ANY(%(keys)s)"
CREATED_ANY = ("SELECT c.entity, c.global_id FROM sync_meta.created c"
               " JOIN unnest(%s::text[], %s::text[]) AS k(e, g) ON c.entity = k.e AND c.global_id = k.g")
CREATED_INSERT = "INSERT INTO sync_meta.created (entity, global_id, key) VALUES (%s, %s, %s)"


Stamp = Mapping[str, Any]  # column -> streams.mapping.writes.Now or a literal


def _table(table: str) -> sql.Composed:
    schema, _, name = table.partition(".")
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


def _stamps(stamp: Stamp) -> list[tuple[sql.Identifier, sql.Composable]]:
    """Each stamped column and the expression it is set to: the write's time, or a literal."""
    out: list[tuple[sql.Identifier, sql.Composable]] = []
    for column, value in stamp.items():
        if isinstance(value, Now):
            expr: sql.Composable = (sql.SQL("now()") if value.utc
                                    else sql.SQL("(now() AT TIME ZONE {})").format(sql.Literal(value.now)))
        else:
            expr = sql.Literal(value)
        out.append((sql.Identifier(column), expr))
    return out


def key_expression(key: KeyFormat) -> sql.Composed:
    """The expression of a new key: the sequence's next value through the format."""
    parts: list[sql.Composable] = []
    for kind, arg in key.parse(key.format):
        if kind == "text":
            parts.append(sql.Literal(arg))
        elif kind == "year":
            parts.append(sql.SQL("to_char(now(), 'YYYY')"))
        else:
            parts.append(sql.SQL("(SELECT lpad(v, greatest({}, length(v)), '0') FROM (SELECT nextval({})::text"
                                 " AS v) AS n)").format(sql.Literal(arg), sql.Literal(key.sequence)))
    return sql.SQL("({})").format(sql.SQL(" || ").join(parts))


def _insert(table: str, columns: list[str], stamp: Stamp, key: tuple[str, KeyFormat] | None = None) -> sql.Composed:
    """``INSERT INTO t (columns, stamped columns[, key]) VALUES (placeholders, stamp expressions[, new key])``."""
    stamps = _stamps(stamp) + ([(sql.Identifier(key[0]), key_expression(key[1]))] if key else [])
    return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        _table(table), sql.SQL(", ").join([*(sql.Identifier(c) for c in columns), *(i for i, _ in stamps)]),
        sql.SQL(", ").join([*(sql.Placeholder() for _ in columns), *(e for _, e in stamps)]))


def _set(assignments: list[sql.Composable], stamp: Stamp) -> sql.Composed:
    return sql.SQL(", ").join([*assignments, *(sql.SQL("{} = {}").format(i, e) for i, e in _stamps(stamp))])


def insert_returning(table: str, columns: list[str], key_column: str, stamp: Stamp | None = None,
                     new_key: KeyFormat | None = None) -> sql.Composed:
    """``INSERT`` a new row returning its key: from ``new_key``, else the table's default (e.g. a sequence)."""
    return sql.SQL("{} RETURNING {}").format(
        _insert(table, columns, stamp or {}, (key_column, new_key) if new_key else None), sql.Identifier(key_column))


def insert_recorded(table: str, columns: list[str], key_column: str, stamp: Stamp | None = None,
                    new_key: KeyFormat | None = None) -> sql.Composed:
    """``INSERT`` a new row and record which global id it was created for, in one statement; returns its key.

    Parameters: the column values, then the entity and the global id.
    """
    return sql.SQL("WITH row AS ({})"
                   " INSERT INTO sync_meta.created (entity, global_id, key) SELECT %s, %s, {}::text FROM row"
                   " RETURNING key").format(insert_returning(table, columns, key_column, stamp, new_key),
                                            sql.Identifier(key_column))


def insert_many(table: str, columns: list[str], stamp: Stamp | None = None) -> sql.Composed:
    """``INSERT`` one row (for ``executemany``)."""
    return _insert(table, columns, stamp or {})


def set_row(table: str, key_column: str, columns: list[str], stamp: Stamp | None = None) -> sql.Composed:
    """``UPDATE`` columns of one row (named parameters, the key as ``__key``) unless it holds those values.

    Returns the columns' values from before (no row: nothing changed).
    """
    target = _table(table)
    key = sql.Identifier(key_column)
    idents = [sql.Identifier(c) for c in columns]
    params = [sql.Placeholder(c) for c in columns]
    return sql.SQL("UPDATE {} AS t SET {} FROM (SELECT {}, {} FROM {} WHERE {} = %(__key)s FOR UPDATE) AS o"
                   " WHERE t.{} = o.{} AND ({}) IS DISTINCT FROM ({}) RETURNING {}").format(
        target, _set([sql.SQL("{} = {}").format(i, p) for i, p in zip(idents, params, strict=True)], stamp or {}),
        key, sql.SQL(", ").join(idents), target, key, key, key,
        sql.SQL(", ").join(sql.SQL("t.{}").format(i) for i in idents), sql.SQL(", ").join(params),
        sql.SQL(", ").join(sql.SQL("o.{}").format(i) for i in idents),
    )


def compare_and_set(table: str, key_column: str, column: str, version_column: str | None,
                    stamp: Stamp | None = None) -> sql.Composed:
    """``UPDATE`` one column of one row, only if it still holds what the sync saw, and differs.

    Parameters: ``value``, ``key``, ``expect`` and (with a version column) ``expect_row``.
    """
    conditions = [
        sql.SQL("{} = %(key)s").format(sql.Identifier(key_column)),
        sql.SQL("{} IS NOT DISTINCT FROM %(expect)s").format(sql.Identifier(column)),
        sql.SQL("{} IS DISTINCT FROM %(value)s").format(sql.Identifier(column)),
    ]
    if version_column:
        conditions.append(sql.SQL("{} = %(expect_row)s").format(sql.Identifier(version_column)))
    return sql.SQL("UPDATE {} SET {} WHERE {}").format(
        _table(table), _set([sql.SQL("{} = %(value)s").format(sql.Identifier(column))], stamp or {}),
        sql.SQL(" AND ").join(conditions))


def progress_select() -> sql.Composed:
    """The last applied offset of some partitions of a topic, and the topic id then; locked for this transaction.

    Parameters: topic, partitions. Only those rows are locked: workers applying other partitions of
    the topic do not wait for each other.
    """
    return sql.SQL('SELECT partition, "offset", incarnation FROM sync_meta.applier_progress WHERE topic = %s'
                   " AND partition = ANY(%s) FOR UPDATE").format()


def progress_upsert() -> sql.Composed:
    """Record the last applied offset of a partition of a topic incarnation (same transaction as the writes).

    Parameters: topic, partition, offset, incarnation. Within one incarnation the offset only grows;
    a new incarnation replaces the old one's.
    """
    return sql.SQL(
        'INSERT INTO sync_meta.applier_progress (topic, partition, "offset", incarnation) VALUES (%s, %s, %s, %s)'
        ' ON CONFLICT (topic, partition) DO UPDATE SET incarnation = EXCLUDED.incarnation,'
        ' "offset" = CASE WHEN applier_progress.incarnation = EXCLUDED.incarnation'
        ' THEN greatest(applier_progress."offset", EXCLUDED."offset") ELSE EXCLUDED."offset" END'
    ).format()
