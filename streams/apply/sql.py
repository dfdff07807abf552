"""SQL for appliers, composed (never formatted) with ``psycopg.sql``. Pure: no connection needed."""

from __future__ import annotations

from psycopg import sql

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
CREATED_OF_ENTITY = ("SELECT key, global_id FROM sync_meta.created"
                     " WHERE entity = %(entity)s AND (%(keys)s::text[] IS NULL OR key = ANY(%(keys)s))")
CREATED_ANY = ("SELECT c.entity, c.global_id FROM sync_meta.created c"
               " JOIN unnest(%s::text[], %s::text[]) AS k(e, g) ON c.entity = k.e AND c.global_id = k.g")
CREATED_INSERT = "INSERT INTO sync_meta.created (entity, global_id, key) VALUES (%s, %s, %s)"


def insert_returning(table: str, columns: list[str], key_column: str) -> sql.Composed:
    """``INSERT`` a new row (the key from the table's default, e.g. a sequence) returning its key."""
    schema, _, name = table.partition(".")
    return sql.SQL("INSERT INTO {}.{} ({}) VALUES ({}) RETURNING {}").format(
        sql.Identifier(schema), sql.Identifier(name), sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.SQL(", ").join(sql.Placeholder() for _ in columns), sql.Identifier(key_column),
    )


def insert_recorded(table: str, columns: list[str], key_column: str) -> sql.Composed:
    """``INSERT`` a new row and record which global id it was created for, in one statement; returns its key.

    Parameters: the column values, then the entity and the global id.
    """
    schema, _, name = table.partition(".")
    return sql.SQL("WITH row AS (INSERT INTO {}.{} ({}) VALUES ({}) RETURNING {})"
                   " INSERT INTO sync_meta.created (entity, global_id, key) SELECT %s, %s, {}::text FROM row"
                   " RETURNING key").format(
        sql.Identifier(schema), sql.Identifier(name), sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.SQL(", ").join(sql.Placeholder() for _ in columns), sql.Identifier(key_column),
        sql.Identifier(key_column),
    )


def insert_many(table: str, columns: list[str]) -> sql.Composed:
    """``INSERT`` one row (for ``executemany``)."""
    schema, _, name = table.partition(".")
    return sql.SQL("INSERT INTO {}.{} ({}) VALUES ({})").format(
        sql.Identifier(schema), sql.Identifier(name), sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.SQL(", ").join(sql.Placeholder() for _ in columns),
    )


def set_row(table: str, key_column: str, columns: list[str]) -> sql.Composed:
    """``UPDATE`` columns of one row (named parameters, the key as ``__key``) unless it holds those values.

    Returns the columns' values from before (no row: nothing changed).
    """
    schema, _, name = table.partition(".")
    target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))
    key = sql.Identifier(key_column)
    idents = [sql.Identifier(c) for c in columns]
    params = [sql.Placeholder(c) for c in columns]
    return sql.SQL("UPDATE {} AS t SET {} FROM (SELECT {}, {} FROM {} WHERE {} = %(__key)s FOR UPDATE) AS o"
                   " WHERE t.{} = o.{} AND ({}) IS DISTINCT FROM ({}) RETURNING {}").format(
        target, sql.SQL(", ").join(sql.SQL("{} = {}").format(i, p) for i, p in zip(idents, params, strict=True)),
        key, sql.SQL(", ").join(idents), target, key, key, key,
        sql.SQL(", ").join(sql.SQL("t.{}").format(i) for i in idents), sql.SQL(", ").join(params),
        sql.SQL(", ").join(sql.SQL("o.{}").format(i) for i in idents),
    )


def compare_and_set(table: str, key_column: str, column: str, version_column: str | None) -> sql.Composed:
    """``UPDATE`` one column of one row, only if it still holds what the sync saw, and differs.

    Parameters: ``value``, ``key``, ``expect`` and (with a version column) ``expect_row``.
    """
    schema, _, name = table.partition(".")
    conditions = [
        sql.SQL("{} = %(key)s").format(sql.Identifier(key_column)),
        sql.SQL("{} IS NOT DISTINCT FROM %(expect)s").format(sql.Identifier(column)),
        sql.SQL("{} IS DISTINCT FROM %(value)s").format(sql.Identifier(column)),
    ]
    if version_column:
        conditions.append(sql.SQL("{} = %(expect_row)s").format(sql.Identifier(version_column)))
    return sql.SQL("UPDATE {}.{} SET {} = %(value)s WHERE {}").format(
        sql.Identifier(schema), sql.Identifier(name), sql.Identifier(column), sql.SQL(" AND ").join(conditions)
    )


def progress_select() -> sql.Composed:
    """The last applied offset of each partition of a topic, and the topic id then; locked for this transaction."""
    return sql.SQL('SELECT partition, "offset", incarnation FROM sync_meta.applier_progress WHERE topic = %s'
                   " FOR UPDATE").format()


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
