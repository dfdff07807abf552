"""The reconcile stage: one entity at a time, in the order of its changes.

Each change runs the pure core on the entity's row-locked state in the sync store; commands,
conflicts and the canonical record are sent and acknowledged before the state commits.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from streams import metrics
from streams.agents.flow import Flow
from streams.errors import SyncError, TerminalError
from streams.reconcile.core import Conflict, EntityState, Outcome, apply_change, deactivate, other, request_create
from streams.reconcile.records import (
    canonical_record,
    cause_fields,
    cause_ref,
    command_record,
    conflict_record,
    create_record,
)
from streams.topics import CONFLICTS, commands_topic

if TYPE_CHECKING:
    from streams.app import Processors

log = logging.getLogger(__name__)


class Reconcile:
    """The reconcile stage of a worker."""

    def __init__(self, ctx: Processors) -> None:
        self.ctx = ctx

    def plan(self, flow: Flow, rec: dict[str, Any]) -> tuple[Any, Any]:
        """For one decoded change: the locked-state step, and ``finish(result, conflict ids) -> sends``."""
        profile, entity = flow.profile, flow.entity
        meta = rec["metadata"]
        commit_ms = int(meta["source_commit_time"].timestamp() * 1000)
        change_version = tuple(rec["source_order"]) if rec["source_order"] else (commit_ms, meta["lsn"] or 0)
        system, gid, ref = rec["system"], rec["global_id"], cause_ref(meta)
        cause = cause_fields(ref)
        ids = {"crm": rec["crm_id"], "erp": rec["erp_id"]}
        if rec["values_json"] is None and rec["op"] != "create":  # a deletion: deactivate the counterpart
            def deleted(state: EntityState, now_ms: int) -> tuple[EntityState, list[Conflict], Any]:
                rule = profile.deactivation(other(system)) if profile.in_scope(state.values) else None
                return state, [], deactivate(rule, state, system, change_version, now_ms)  # the step's own state

            def finish_deleted(cmd: Any, _: list[int]) -> list[tuple[str, str, Any]]:
                metrics.RECONCILE_EVENTS.labels(entity, system, "deleted").inc()
                if cmd is None or ids[cmd.system] is None:
                    return []
                log.info("%s %s deleted: deactivating %s %s", system, rec["key"], cmd.system, ids[cmd.system])
                return [(commands_topic(cmd.system), gid,
                         command_record(entity, gid, ids[cmd.system], cmd, cause, kind="deactivation"))]

            return deleted, finish_deleted

        def create_rule(state: EntityState) -> Any:  # none for a record out of the pilot's scope
            return profile.create_rule(system) if profile.in_scope(state.values) else None

        def step(state: EntityState, now_ms: int) -> tuple[EntityState, list[Conflict], Any]:
            if rec["op"] == "create":  # the record's hold passed without a twin: the create rule decides
                outcome = Outcome(state)  # the step's own state (Processors.locked)
                return outcome.state, [], (outcome, request_create(create_rule(outcome.state), outcome.state,
                                                                   system, now_ms))
            outcome = apply_change(profile.fields, state, system, json.loads(rec["values_json"]), change_version,
                                   json.loads(rec["row_version_json"]), now_ms, commit_ms, rec.get("by_sync"), ref,
                                   profile.in_scope if profile.scope else None, partial=rec["op"] == "partial",
                                   owned=True)  # the step's own state (Processors.locked)
            create = (request_create(create_rule(outcome.state), outcome.state, system, now_ms)
                      if rec["may_create"] else None)
            return outcome.state, outcome.conflicts, (outcome, create)

        def finish(result: Any, conflict_ids: list[int]) -> list[tuple[str, str, Any]]:
            outcome, create = result
            sends: list[tuple[str, str, Any]] = []
            if create is not None:
                peer = other(system)
                sends.append((commands_topic(peer), gid,
                              create_record(entity, gid, peer, create, cause)))
            for cmd in outcome.commands:
                if ids[cmd.system] is not None:  # else: not linked on that system yet
                    sends.append((commands_topic(cmd.system), gid, command_record(
                        entity, gid, ids[cmd.system], cmd, cause)))
            sends += [(CONFLICTS, gid, conflict_record(entity, gid, conflict_id, c))
                      for conflict_id, c in zip(conflict_ids, outcome.conflicts, strict=True)]
            # Built later, for the entity's last change in the batch; a creation changes no value.
            if flow.canonical and outcome.replays == 0 and rec["op"] != "create":
                sends.append((flow.canonical, gid, lambda: canonical_record(
                    profile, outcome.state, gid, ids["crm"], ids["erp"], meta)))
            m = metrics
            m.RECONCILE_EVENTS.labels(entity, system, "commands" if outcome.commands else "no_command").inc()
            m.ECHOES.labels(entity, system).inc(outcome.echoes)
            for cmd in outcome.commands:
                m.COMMANDS.labels(entity, cmd.system).inc()
            for c in outcome.conflicts:
                m.CONFLICTS.labels(entity, c.field, c.kind, c.policy, c.resolution or "manual_open").inc()
            return sends

        return step, finish

    async def reconcile(self, messages: list[Any]) -> None:
        """Reconcile a batch of changes in one sync-store transaction; each entity's in order."""
        planned: list[tuple[str, str, Any, Any]] = []
        for message in messages:
            flow = self.ctx.by_changes[message.topic]
            try:
                rec = self.ctx.decode.loads(message.value)
                step, finish = self.plan(flow, rec)
            except Exception as exc:  # written by normalize; a bad one is still never a stop
                if isinstance(exc, SyncError) and not isinstance(exc, TerminalError):
                    raise
                await self.ctx.dead_letter("reconcile", f"{type(exc).__name__}: {exc}", message)
                continue
            planned.append((flow.entity, rec["global_id"], step, finish))
        if not planned:
            return
        steps = [(entity, gid, step) for entity, gid, step, _ in planned]
        results, tx, saved = await self.ctx.retrying("reconcile", self.ctx.locked, "reconcile", steps)
        sends = [send for (_, _, _, finish), (result, ids) in zip(planned, results, strict=True)
                 for send in finish(result, ids)]
        # A compacted canonical topic keeps an entity's latest record: one per entity and batch, its
        # state after the batch's last change of it (the others are built only to be superseded).
        last = {(topic, key): i for i, (topic, key, record) in enumerate(sends) if callable(record)}
        sends = [(topic, key, record() if callable(record) else record) for i, (topic, key, record) in enumerate(sends)
                 if not callable(record) or last[(topic, key)] == i]
        await self.ctx.send_then_commit(tx, sends)
        self.ctx.states.put(saved)  # committed
        metrics.STAGE_EVENTS.labels("reconcile", "out").inc(len(sends))
