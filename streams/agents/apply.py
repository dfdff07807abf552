"""The appliers: commands written to one target database per system.

A write the target refuses is a dead letter with the target's reason and frees its field in the
entity's state, so the next value can go.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from streams import metrics
from streams.apply.executor import Applier, Delivery
from streams.errors import TransientError
from streams.reconcile.core import Conflict, EntityState, reject
from streams.reconcile.records import cause_from, command_record
from streams.topics import commands_topic

if TYPE_CHECKING:
    from streams.app import Processors

log = logging.getLogger(__name__)


class Apply:
    """The appliers of a worker (one per system)."""

    def __init__(self, ctx: Processors) -> None:
        self.ctx = ctx

    async def apply(self, applier: Applier, messages: list[Any]) -> None:
        """Apply a batch of commands to one system; refused ones are dead letters and free their field."""
        stage = f"apply-{applier.system}"
        batch, bad = [], []
        for m in messages:
            try:
                batch.append(Delivery(m.topic, m.partition, m.offset, self.ctx.decode.loads(m.value),
                                      self.ctx.incarnations.get(m.topic, ""), getattr(m, "item", 0)))
            except TransientError:
                raise  # the registry: retried, never a dead letter
            except Exception as exc:  # undecodable command: dead letter, the batch goes on
                bad.append((m, f"{type(exc).__name__}: {exc}"))
        result = await self.ctx.retrying(f"apply {applier.system}", applier.apply, batch)
        if result.audit:
            self.ctx.audit.soon(applier.system)
        metrics.STAGE_EVENTS.labels(stage, "out").inc(result.written + result.created)
        for outcome, n in (("written", result.written), ("created", result.created), ("skipped", result.skipped),
                           ("replayed", result.replayed), ("failed", len(result.failed))):
            metrics.APPLY.labels(applier.system, outcome).inc(n)
        now = time.time()
        direction = f"{'erp' if applier.system == 'crm' else 'crm'}_to_{applier.system}"
        for entity, when in result.written_cause_times:
            metrics.END_TO_END.labels(entity, direction).observe(max(0.0, now - when))
        for m, reason in bad:
            await self.ctx.dead_letter(stage, reason, m)
        by_offset = {(m.topic, m.partition, m.offset, getattr(m, "item", 0)): m for m in messages}
        for d, reason in result.failed:
            kind = reason.split(":", 1)[0]
            metrics.APPLY_ERRORS.labels(applier.system, kind if kind in metrics.APPLY_ERROR_KINDS else "invalid").inc()
            await self.ctx.dead_letter(stage, reason, by_offset[(d.topic, d.partition, d.offset, d.item)])
        refused = [d.command for d, _ in result.failed if d.command.get("op", "set") == "set"
                   and d.command["entity"] in self.ctx.by_entity]
        if refused:
            await self.refused(refused)

    async def refused(self, commands: list[dict[str, Any]]) -> None:
        """Field writes a target refused: each frees its field's in-flight mark (a value set aside goes now)."""
        steps, sends = [], []
        for cmd in commands:
            system, name, value = cmd["system"], cmd["field"], json.loads(cmd["value_json"])

            def step(state: EntityState, now_ms: int, system: str = system, name: str = name, value: Any = value
                     ) -> tuple[EntityState, list[Conflict], Any]:
                outcome = reject(state, system, name, value, now_ms, owned=True)  # its own (Processors.locked)
                return outcome.state, [], outcome

            steps.append((cmd["entity"], cmd["global_id"], step))
        results, tx, saved = await self.ctx.retrying("apply", self.ctx.locked, "refused", steps)
        for cmd, (outcome, _) in zip(commands, results, strict=True):
            sends += [(commands_topic(c.system), cmd["global_id"], command_record(
                cmd["entity"], cmd["global_id"], cmd["key"], c, cause_from(cmd)))
                for c in outcome.commands]
            log.warning("%s refused %s of %s %s: the field is free again%s", cmd["system"], cmd["field"],
                        cmd["entity"], cmd["key"], " (the value set aside goes now)" if outcome.commands else "")
        await self.ctx.send_then_commit(tx, sends)
        self.ctx.states.put(saved)
