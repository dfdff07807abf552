"""The local stack's demo: installed in an empty database once, never into a database with tables of its own."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from streams.local import seed

pytestmark = pytest.mark.integration


def _tables(conn: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in conn.execute("SELECT schemaname || '.' || tablename FROM pg_tables"
                                       " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1")]


def test_an_existing_erp_database_is_never_given_the_demo(empty_database: dict[str, Any]) -> None:
    with psycopg.connect(**empty_database, autocommit=True) as conn:
        conn.execute('CREATE TABLE public."tabCustomer" (name varchar(140) PRIMARY KEY)')
        conn.execute("CREATE SCHEMA sync_meta; CREATE TABLE sync_meta.heartbeat (id int)")  # the sync's own: no matter
        before = _tables(conn)
        assert seed.install(conn, "erp", seed.generate(5).erp) == seed.FOREIGN
        assert _tables(conn) == before


def test_an_empty_database_gets_the_demo_once(empty_database: dict[str, Any]) -> None:
    with psycopg.connect(**empty_database, autocommit=True) as conn:
        assert seed.install(conn, "erp", seed.generate(5).erp) == seed.SEEDED
        customers = conn.execute("SELECT count(*) FROM public.customers").fetchone()
        assert seed.install(conn, "erp", seed.generate(5).erp) == seed.ALREADY
        assert conn.execute("SELECT count(*) FROM public.customers").fetchone() == customers != (0,)
