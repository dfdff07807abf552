"""The document rules: a change names a document, its rule reads it whole.

Run from normalize for the changes of watched tables, and every few seconds for documents still
waiting for a reference; each sends what it makes (a create, a rollup, a canonical document).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from streams import envelope, faults, metrics
from streams.documents.engine import Touch
from streams.errors import TerminalError
from streams.reconcile.records import metadata

if TYPE_CHECKING:
    from streams.app import Processors

log = logging.getLogger(__name__)


class DocumentStage:
    """The document rules of a worker."""

    def __init__(self, ctx: Processors) -> None:
        self.ctx = ctx

    def touches(self, changes: list[tuple[Any, envelope.ChangeEvent]]) -> list[tuple[Touch | str, Any]]:
        """Each document the changes touch once (its first change is the cause), or a reason it is invalid."""
        out: dict[Any, tuple[Touch | str, Any]] = {}
        for message, change in changes:
            try:
                before = change.before if change.op == "u" else None
                touched = self.ctx.documents.touched(message.topic, change.table, change.row, before)
            except TerminalError as exc:
                out[id(message)] = (exc.message, message)
                continue
            for rule, key in touched:
                out.setdefault((rule.name, key), (Touch(rule, key, metadata(change)), message))
        return list(out.values())

    def run_rules(self, touches: list[tuple[Touch | str, Any]]) -> list[tuple[list[Any], str | None, Any]]:
        """Run each touched document's rule: its sends, or the reason it is invalid (a dead letter)."""
        out: list[tuple[list[Any], str | None, Any]] = []
        for touch, message in touches:
            if isinstance(touch, str):
                out.append(([], touch, message))
                continue
            try:
                faults.point("documents.step")
                sends = self.ctx.documents.run(touch)
            except TerminalError as exc:
                metrics.DOCUMENTS.labels(touch.rule.name, "invalid").inc()
                out.append(([], f"{touch.rule.name} {touch.key}: {exc.message}", message))
                continue
            metrics.DOCUMENTS.labels(touch.rule.name, "sent" if sends else "unchanged").inc()
            out.append((sends, None, message))
        return out

    async def on_changes(self, changes: list[tuple[Any, envelope.ChangeEvent]]) -> None:
        touches = await self.ctx.retrying("documents", self.touches, changes)
        results = await self.ctx.retrying("documents", self.run_rules, touches)
        for _, reason, message in results:
            if reason is not None:
                await self.ctx.dead_letter("document", reason, message)
        sent = await self.ctx.outputs.send([send for sends, _, _ in results for send in sends])
        metrics.STAGE_EVENTS.labels("normalize", "out").inc(sent)

    async def retry_pending(self) -> None:
        """Try the documents waiting for a reference again (an account linked since, say)."""
        touches = await self.ctx.retrying("documents", self.ctx.documents.pending)
        results = await self.ctx.retrying("documents", self.run_rules, [(t, None) for t in touches])
        for _, reason, _ in results:
            if reason is not None:  # its next change is a dead letter; until then it stays pending
                log.warning("pending document now invalid: %s", reason)
        await self.ctx.outputs.send([send for sends, _, _ in results for send in sends])
        counts = await self.ctx.retrying("documents", self.ctx.documents.store.documents_summary)
        for rule in self.ctx.document_profile.creates:
            for state in ("pending", "diverged"):
                metrics.DOCUMENTS_WAITING.labels(rule.name, state).set(counts.get((rule.name, state), 0))
