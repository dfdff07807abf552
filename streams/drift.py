"""Continuous compare: the runs' results in the sync store, and which drift outlived a run.

A worker runs ``compare`` on a schedule (``compare.interval_s``); each entity's last run is one row
of ``sync.compare_runs``: when, the counts per side and category, and the keys of what it found
out of step (each drifted field of a linked pair, each row the sync never saw). Drift the next run
still finds is *persisting*: a change in flight is out of step for a moment, a stuck one stays.
Every worker exports the stored results, so their metrics agree whichever ran the compare.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import psycopg

from streams.compare import Report

DDL = """
CREATE TABLE IF NOT EXISTS sync.compare_runs (
  entity     text PRIMARY KEY,
  ran_at     timestamptz NOT NULL,
  seconds    real NOT NULL,
  categories jsonb NOT NULL,   -- {"crm": {category: n}, "erp": {...}}
  drifted    jsonb NOT NULL,   -- keys of the drifted fields and unknown rows found
  persisting int NOT NULL      -- how many of those the run before found too
);
"""
LOCK = 7_413_902_771  # the advisory lock a worker holds while it runs the compare


def drifted(report: Report) -> set[str]:
    """What a run found out of step: ``<global id>/<field>`` per drifted field, ``unknown/<system>/<key>``."""
    return ({f"{d.global_id}/{d.field}" for d in report.drift}
            | {f"unknown/{s}/{k}" for s, keys in report.unknown.items() for k in keys})


def record(conn: psycopg.Connection[Any], report: Report, seconds: float) -> int:
    """Store a run's result; how many of its findings the previous run found too."""
    found = drifted(report)
    with conn.transaction():
        row = conn.execute("SELECT drifted FROM sync.compare_runs WHERE entity = %s FOR UPDATE",
                           (report.entity,)).fetchone()
        persisting = len(found & set(row[0])) if row else 0
        conn.execute(
            "INSERT INTO sync.compare_runs (entity, ran_at, seconds, categories, drifted, persisting)"
            " VALUES (%s, now(), %s, %s, %s, %s) ON CONFLICT (entity) DO UPDATE SET ran_at = EXCLUDED.ran_at,"
            " seconds = EXCLUDED.seconds, categories = EXCLUDED.categories, drifted = EXCLUDED.drifted,"
            " persisting = EXCLUDED.persisting",
            (report.entity, seconds, json.dumps(report.as_dict()["categories"]), json.dumps(sorted(found)),
             persisting))
    return persisting


def latest(conn: psycopg.Connection[Any]) -> dict[str, tuple[datetime, dict[str, dict[str, int]], int]]:
    """Per entity: when its last run finished, its counts per side and category, and the persisting drift."""
    rows = conn.execute("SELECT entity, ran_at, categories, persisting FROM sync.compare_runs").fetchall()
    return {str(r[0]): (r[1], r[2], int(r[3])) for r in rows}
