"""The sync's own tables in a database it writes to: created by it only when a DBA has not.

With the least-privilege roles (``crm-erp-sync roles``) a DBA creates ``sync_meta`` and its tables
and the sync's login has no DDL right there; PostgreSQL checks that right even for ``CREATE ...
IF NOT EXISTS``, so the sync looks first and runs its DDL only if something is missing (the demo,
a login that owns the database).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg


def ensure(conn: psycopg.Connection[Any], ddl: str, tables: Sequence[str], columns: Sequence[str] = ()) -> bool:
    """Run ``ddl`` unless every ``schema.table`` and ``schema.table.column`` is there; whether it ran."""
    row = conn.execute(
        "SELECT bool_and(to_regclass(t) IS NOT NULL) AND (SELECT count(*) FROM unnest(%s::text[]) AS c(n)"
        " WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = to_regclass(split_part(c.n, '.', 1)"
        " || '.' || split_part(c.n, '.', 2)) AND a.attname = split_part(c.n, '.', 3) AND NOT a.attisdropped)) = 0"
        " FROM unnest(%s::text[]) AS t", (list(columns), list(tables))).fetchone()
    if row and row[0]:
        return False
    conn.execute(ddl)
    return True
