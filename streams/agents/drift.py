"""Continuous compare in a worker: ``compare`` every ``compare.interval_s``, its findings as metrics.

A run reads both databases read-only, ``compare.chunk`` rows per snapshot with ``compare.pause_s``
between chunks, in a thread. One worker runs it at a time (an advisory lock in the sync store);
every worker exports the stored results (``streams.drift``). A run that fails is logged and
tried again at the next tick: it never stops the sync.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import psycopg

from streams import drift, metrics
from streams.compare import CATEGORIES, compare
from streams.errors import TransientError
from streams.store import Store

if TYPE_CHECKING:
    from streams.app import Processors

log = logging.getLogger(__name__)


def _locked(store: Store) -> bool:
    row = store.conn.execute("SELECT pg_try_advisory_lock(%s)", (drift.LOCK,)).fetchone()
    return bool(row and row[0])


class DriftWatch:
    """The continuous compare of a worker."""

    def __init__(self, ctx: Processors) -> None:
        self.ctx = ctx
        self.store: Store | None = None  # its own connection: a run takes a while

    def _store(self) -> Store:
        if self.store is None:
            try:
                self.store = Store(self.ctx.settings.store.conninfo())
            except psycopg.OperationalError as exc:
                raise TransientError(f"sync store unavailable: {exc}".strip()) from exc
        return self.store

    def run_if_due(self) -> dict[str, Any]:
        """Compare the entities whose last run is older than the interval (unless another worker is at it)."""
        settings, store = self.ctx.settings, self._store()
        runs = drift.latest(store.conn)
        now = time.time()
        due = [f.profile for f in self.ctx.flows
               if f.entity not in runs or now - runs[f.entity][0].timestamp() >= settings.compare.interval_s]
        if due and _locked(store):
            try:
                for profile in due:
                    started = time.monotonic()
                    try:
                        report = compare(settings, profile, store, settings.compare.chunk, settings.compare.pause_s)
                    except psycopg.OperationalError:
                        raise
                    except Exception:  # a bug must not stop the sync: logged, tried again next time
                        log.exception("continuous compare of %s failed", profile.entity)
                        continue
                    seconds = time.monotonic() - started
                    persisting = drift.record(store.conn, report, seconds)
                    log.info("continuous compare of %s: %s in %.1f s, %d still out of step since the last run",
                             profile.entity, {s: dict(c) for s, c in report.categories.items()}, seconds, persisting)
            finally:
                store.conn.execute("SELECT pg_advisory_unlock(%s)", (drift.LOCK,))
            runs = drift.latest(store.conn)
        return runs

    async def tick(self) -> None:
        """Run when due; export the latest results."""
        runs = await self.ctx.retrying("compare", self.run_if_due)
        for entity, (ran_at, categories, persisting) in runs.items():
            for system in ("crm", "erp"):
                for category in CATEGORIES:
                    metrics.DRIFT_RECORDS.labels(entity, system, category).set(categories[system].get(category, 0))
            metrics.DRIFT_PERSISTING.labels(entity).set(persisting)
            metrics.DRIFT_LAST_RUN.labels(entity).set(ran_at.timestamp())
