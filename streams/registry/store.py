"""Registry persistence in the sync store (PostgreSQL), so schema ids survive restarts."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import psycopg

from streams.ddl import locked

SCHEMA = "registry"
DDL = """
CREATE TABLE IF NOT EXISTS registry.schemas (
  id          serial PRIMARY KEY,
  schema_type text NOT NULL,
  canonical   text NOT NULL,
  UNIQUE (schema_type, canonical)
);
CREATE TABLE IF NOT EXISTS registry.subject_versions (
  subject    text NOT NULL,
  version    int  NOT NULL,
  schema_id  int  NOT NULL REFERENCES registry.schemas(id),
  deleted    boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (subject, version)
);
CREATE TABLE IF NOT EXISTS registry.config (
  subject       text PRIMARY KEY,   -- '' is the global level
  compatibility text NOT NULL
);
"""


@dataclass(frozen=True)
class Version:
    """One version of a subject."""

    subject: str
    version: int
    schema_id: int
    schema_type: str
    schema: str


class RegistryStore:
    """Thread-safe access to the registry tables over one connection (registry traffic is light)."""

    def __init__(self, conninfo: dict[str, Any]) -> None:
        self._conninfo = conninfo
        self._lock = threading.Lock()
        self._conn = psycopg.connect(**conninfo, autocommit=True)
        with self._lock:
            locked(self._conn, DDL, SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def _query(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._conn.closed:
                self._conn = psycopg.connect(**self._conninfo, autocommit=True)
            return self._conn.execute(query, params).fetchall()

    def schema_by_id(self, schema_id: int) -> tuple[str, str] | None:
        """(schema type, schema text) of an id."""
        rows = self._query("SELECT schema_type, canonical FROM registry.schemas WHERE id = %s", (schema_id,))
        return (rows[0][0], rows[0][1]) if rows else None

    def subjects_of(self, schema_id: int) -> list[tuple[str, int]]:
        """(subject, version) pairs using an id."""
        rows = self._query(
            "SELECT subject, version FROM registry.subject_versions WHERE schema_id = %s AND NOT deleted"
            " ORDER BY subject, version",
            (schema_id,),
        )
        return [(r[0], r[1]) for r in rows]

    def subjects(self, include_deleted: bool = False) -> list[str]:
        """All subjects with at least one live version."""
        rows = self._query(
            "SELECT DISTINCT subject FROM registry.subject_versions WHERE %s OR NOT deleted ORDER BY subject",
            (include_deleted,),
        )
        return [r[0] for r in rows]

    def versions(self, subject: str) -> list[Version]:
        """Live versions of a subject, oldest first."""
        rows = self._query(
            "SELECT v.subject, v.version, s.id, s.schema_type, s.canonical FROM registry.subject_versions v"
            " JOIN registry.schemas s ON s.id = v.schema_id WHERE v.subject = %s AND NOT v.deleted"
            " ORDER BY v.version",
            (subject,),
        )
        return [Version(*row) for row in rows]

    def register(self, subject: str, schema_type: str, canonical: str) -> Version:
        """Add ``canonical`` as the next version of ``subject`` (or return the existing one)."""
        with self._lock, self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (subject,))
            row = self._conn.execute(
                "INSERT INTO registry.schemas (schema_type, canonical) VALUES (%s, %s)"
                " ON CONFLICT (schema_type, canonical) DO UPDATE SET canonical = EXCLUDED.canonical"
                " RETURNING id",
                (schema_type, canonical),
            ).fetchone()
            assert row is not None
            schema_id = int(row[0])
            existing = self._conn.execute(
                "SELECT version FROM registry.subject_versions WHERE subject = %s AND schema_id = %s AND NOT deleted",
                (subject, schema_id),
            ).fetchone()
            if existing:
                return Version(subject, existing[0], schema_id, schema_type, canonical)
            latest = self._conn.execute(
                "SELECT coalesce(max(version), 0) FROM registry.subject_versions WHERE subject = %s", (subject,)
            ).fetchone()
            version = int(latest[0] if latest else 0) + 1
            self._conn.execute(
                "INSERT INTO registry.subject_versions (subject, version, schema_id) VALUES (%s, %s, %s)",
                (subject, version, schema_id),
            )
            return Version(subject, version, schema_id, schema_type, canonical)

    def delete_subject(self, subject: str, permanent: bool) -> list[int]:
        """Soft- (or hard-) delete every version of a subject; the deleted version numbers."""
        if permanent:
            rows = self._query(
                "DELETE FROM registry.subject_versions WHERE subject = %s RETURNING version", (subject,)
            )
        else:
            rows = self._query(
                "UPDATE registry.subject_versions SET deleted = true WHERE subject = %s AND NOT deleted"
                " RETURNING version",
                (subject,),
            )
        return sorted(r[0] for r in rows)

    def delete_version(self, subject: str, version: int) -> bool:
        """Soft-delete one version."""
        rows = self._query(
            "UPDATE registry.subject_versions SET deleted = true WHERE subject = %s AND version = %s"
            " AND NOT deleted RETURNING version",
            (subject, version),
        )
        return bool(rows)

    def compatibility(self, subject: str) -> str | None:
        """The level set for ``subject`` ('' for global), or None."""
        rows = self._query("SELECT compatibility FROM registry.config WHERE subject = %s", (subject,))
        return rows[0][0] if rows else None

    def set_compatibility(self, subject: str, level: str | None) -> None:
        """Set (or with None, remove) the level of ``subject`` ('' for global)."""
        if level is None:
            self._query("DELETE FROM registry.config WHERE subject = %s RETURNING subject", (subject,))
            return
        self._query(
            "INSERT INTO registry.config (subject, compatibility) VALUES (%s, %s)"
            " ON CONFLICT (subject) DO UPDATE SET compatibility = EXCLUDED.compatibility RETURNING subject",
            (subject, level),
        )
