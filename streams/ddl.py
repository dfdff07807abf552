"""The sync's own tables in a database it writes to: created by it only when a DBA has not.

With the least-privilege roles (``crm-erp-sync roles``) a DBA creates ``sync_meta`` and its tables
and the sync's login has no DDL right there; PostgreSQL checks that right even for ``CREATE ...
IF NOT EXISTS``, so the sync looks first and runs its DDL only if something is missing (the demo,
a login that owns the database).

Several workers start at once and ``CREATE ... IF NOT EXISTS`` is not safe against itself: two
sessions creating the same table both pass the check and one fails on ``pg_type``'s unique index.
Every DDL of the sync therefore runs under one transaction-scoped advisory lock (:func:`locked`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

LOCK_KEY = 0x5C_E7_DD_1  # any fixed number; the sync's DDL in one database runs one at a time


def locked(conn: psycopg.Connection[Any], ddl: str, schema: str | None = None) -> None:
    """Run ``ddl`` in a transaction (a savepoint inside one) holding the sync's DDL lock.

    ``schema`` is created first if it is missing, and only then: ``CREATE SCHEMA IF NOT EXISTS``
    needs ``CREATE`` on the database even when the schema is there, which the store's role
    (owner of its schema, ``crm-erp-sync roles store``) does not have.
    """
    with conn.transaction():
        _lock(conn)
        if schema is not None and not _present_schema(conn, schema):
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(ddl)


def ensure(conn: psycopg.Connection[Any], ddl: str, tables: Sequence[str], columns: Sequence[str] = ()) -> bool:
    """Run ``ddl`` unless every ``schema.table`` and ``schema.table.column`` is there; whether it ran."""
    if _present(conn, tables, columns):
        return False
    with conn.transaction():
        _lock(conn)
        if _present(conn, tables, columns):  # another worker created them while this one waited
            return False
        conn.execute(ddl)
    return True


def _lock(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))


def _present_schema(conn: psycopg.Connection[Any], schema: str) -> bool:
    row = conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", (schema,)).fetchone()
    return bool(row and row[0])


def _present(conn: psycopg.Connection[Any], tables: Sequence[str], columns: Sequence[str]) -> bool:
    row = conn.execute(
        "SELECT bool_and(to_regclass(t) IS NOT NULL) AND (SELECT count(*) FROM unnest(%s::text[]) AS c(n)"
        " WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = to_regclass(split_part(c.n, '.', 1)"
        " || '.' || split_part(c.n, '.', 2)) AND a.attname = split_part(c.n, '.', 3) AND NOT a.attisdropped)) = 0"
        " FROM unnest(%s::text[]) AS t", (list(columns), list(tables))).fetchone()
    return bool(row and row[0])


def ensure_bookkeeping(conn: psycopg.Connection[Any]) -> None:
    """The applier's tables in a target database, unless a DBA or an earlier start made them.

    Its progress, the records it created, its transactions and the audit outbox.
    """
    from streams.apply.sql import PROGRESS_DDL, PROGRESS_TABLES

    ensure(conn, PROGRESS_DDL, PROGRESS_TABLES, ["sync_meta.applier_progress.incarnation"])
