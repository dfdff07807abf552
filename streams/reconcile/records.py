"""Avro records of the sync topics (changes, commands, conflicts, canonical), built from pure values."""

from __future__ import annotations

import hashlib
import itertools
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from streams.envelope import ChangeEvent
from streams.jsontext import dumps as _json
from streams.mapping.profile import Profile
from streams.reconcile.core import Command, Conflict, EntityState

_RUN = uuid.uuid4().hex  # this process's: ids stay unique across workers and restarts
_SERIAL = itertools.count()


def command_id() -> str:
    """A new command's id: the process's random run id and a serial (a uuid4 each was ~1 % of a worker)."""
    return f"{_RUN}-{next(_SERIAL)}"


def cause_ref(meta: dict[str, Any]) -> dict[str, Any]:
    """A change's reference as the entity state keeps it for a write it causes later (JSON-able)."""
    return {"ms": int(meta["source_commit_time"].timestamp() * 1000), "event": meta["event_id"],
            "system": meta.get("source_system"), "tx_id": meta.get("tx_id"), "lsn": meta.get("lsn")}


def cause_fields(ref: Mapping[str, Any]) -> dict[str, Any]:
    """A command's cause fields (commit time, event, system, transaction, LSN) from a change's reference."""
    return {"cause_commit_time": datetime.fromtimestamp(ref["ms"] / 1000, tz=UTC), "cause_event": ref["event"],
            "cause_system": ref.get("system"), "cause_tx_id": ref.get("tx_id"), "cause_lsn": ref.get("lsn")}


def cause_of(meta: dict[str, Any]) -> dict[str, Any]:
    """A command's cause fields from a change's metadata."""
    return cause_fields(cause_ref(meta))


def cause_at(ms: int, event: str) -> dict[str, Any]:
    """The cause fields of a command caused by no captured change (a person's decision, say)."""
    return cause_fields({"ms": ms, "event": event})


def cause_from(command: dict[str, Any]) -> dict[str, Any]:
    """The cause fields of an earlier command (a value sent again keeps its cause)."""
    return {name: command.get(name) for name in CAUSE_FIELDS}


CAUSE_FIELDS = ("cause_commit_time", "cause_event", "cause_system", "cause_tx_id", "cause_lsn")


def command_record(entity: str, global_id: str, target_key: str, cmd: Command, cause: dict[str, Any],
                   now: datetime | None = None, kind: str | None = None, decided_by: str | None = None
                   ) -> dict[str, Any]:
    """A ``schemas/sync/command.avsc`` record.

    ``cause`` (from :func:`cause_of`, :func:`cause_at` or :func:`cause_from`) unless the command
    names the change that caused it (a value sent after being set aside). ``kind`` says what the
    write is in the audit trail (default: a resolution when a policy decided it, else an update);
    ``decided_by`` who chose the value (default: the command's policy).
    """
    decided_by = decided_by or cmd.decided_by
    kind = kind or ("resolution" if decided_by else "update")
    cause = cause_fields(cmd.cause) if cmd.cause else cause
    return {
        "command_id": command_id(), "entity": entity, "global_id": global_id, "system": cmd.system,
        "key": target_key, "field": cmd.field, "value_json": _json(cmd.value), "expect_json": _json(cmd.expect),
        "expect_row_json": _json(cmd.expect_row), "issued_at": now or datetime.now(tz=UTC),
        "op": "set", "values_json": None, "kind": kind, "decided_by": decided_by, **cause,
    }


def create_record(entity: str, global_id: str, system: str, values: dict[str, Any],
                  cause: dict[str, Any]) -> dict[str, Any]:
    """A ``create`` command: make the entity exist on ``system`` with canonical ``values``."""
    return {
        "command_id": command_id(), "entity": entity, "global_id": global_id, "system": system, "key": "",
        "field": "", "value_json": "null", "expect_json": "null", "expect_row_json": "null",
        "issued_at": datetime.now(tz=UTC), "op": "create", "values_json": _json(values), "kind": "create",
        "decided_by": None, **cause,
    }


def document_command(op: str, rule: Any, global_id: str, target_key: str, payload: dict[str, Any],
                     meta: dict[str, Any]) -> dict[str, Any]:
    """A document command: ``document`` (create it with its lines) or ``row`` (set a rollup's columns).

    ``field`` names the rule, whose target the applier takes from its own copy of the profile.
    """
    return {
        "command_id": command_id(), "entity": rule.entity, "global_id": global_id, "system": rule.target,
        "key": target_key, "field": rule.name, "value_json": "null", "expect_json": "null",
        "expect_row_json": "null", "issued_at": datetime.now(tz=UTC), "op": op, "values_json": _json(payload),
        "kind": "create" if op == "document" else "update", "decided_by": None, **cause_of(meta),
    }


def conflict_record(entity: str, global_id: str, conflict_id: int, c: Conflict,
                    now: datetime | None = None) -> dict[str, Any]:
    """A ``schemas/sync/conflict.avsc`` record."""
    return {
        "conflict_id": conflict_id, "entity": entity, "global_id": global_id, "field": c.field, "kind": c.kind,
        "policy": c.policy, "base_json": _json(c.base), "crm_json": _json(c.crm), "erp_json": _json(c.erp),
        "resolution": c.resolution, "value_json": None if c.resolution is None else _json(c.value),
        "detected_at": now or datetime.now(tz=UTC),
    }


def personal_value(value: Any, how: str) -> Any:
    """A personal field as a consumer may see it: ``clear``, ``mask`` (first two characters) or ``hash``."""
    if value is None or how == "clear":
        return value
    if how == "mask":
        text = str(value)
        return text[:2] + "*" * max(0, len(text) - 2)
    return hashlib.sha256(str(value).encode("utf-8")).hexdigest()


def metadata(change: ChangeEvent) -> dict[str, Any]:
    """The metadata block (``schemas/canonical/metadata.avsc``) of a source change."""
    return {
        "source_system": change.system, "source_table": change.table, "tx_id": change.tx_id,
        "lsn": change.lsn, "source_commit_time": datetime.fromtimestamp(change.commit_ms / 1000, tz=UTC),
        "capture_time": datetime.fromtimestamp(change.capture_ms / 1000, tz=UTC),
        "event_id": change.position.event_id,
    }


def change_record(entity: str, ids: tuple[str, str | None, str | None], change: ChangeEvent, key: str,
                  values: dict[str, Any] | None, row_version: Any, may_create: bool,
                  by_sync: bool | None = None) -> dict[str, Any]:
    """A ``schemas/sync/change.avsc`` record; ``ids`` are (global, CRM, ERP); ``values`` None for a deletion."""
    global_id, crm_id, erp_id = ids
    return {
        "entity": entity, "global_id": global_id, "system": change.system, "key": key,
        "op": "delete" if values is None else "upsert", "values_json": None if values is None else _json(values),
        "row_version_json": _json(row_version), "may_create": may_create, "crm_id": crm_id,
        "erp_id": erp_id, "metadata": metadata(change), "source_order": list(change.order), "by_sync": by_sync,
    }


def canonical_record(profile: Profile, state: EntityState, global_id: str, crm_id: str | None, erp_id: str | None,
                     meta: dict[str, Any]) -> dict[str, Any]:
    """A canonical record (the profile's ``.avsc``) of the entity after a change, personal data per profile."""
    how = profile.canonical.personal if profile.canonical else "hash"
    values = state.merged(profile.fields)
    record: dict[str, Any] = {
        name: personal_value(values.get(name), how) if spec.personal else values.get(name)
        for name, spec in profile.fields.items()
    }
    record.update({"global_id": global_id, "crm_id": crm_id, "erp_id": erp_id, "deleted": False, "metadata": meta})
    return record


def create_request(entity: str, link: tuple[str, str | None, str | None], system: str, key: str,
                   table: str) -> dict[str, Any]:
    """A ``schemas/sync/change.avsc`` record asking reconcile to create ``system``'s record on the other system.

    Sent once the hold passed without a twin (``identity.keys``); reconcile applies the profile's
    create rule to the values it holds of the record (so a record the rule does not take stays).
    """
    global_id, crm_id, erp_id = link
    now = datetime.now(tz=UTC)
    return {
        "entity": entity, "global_id": global_id, "system": system, "key": key, "op": "create",
        "values_json": None, "row_version_json": "null", "may_create": True, "crm_id": crm_id, "erp_id": erp_id,
        "metadata": {"source_system": system, "source_table": table, "tx_id": None, "lsn": None,
                     "source_commit_time": now, "capture_time": now, "event_id": f"create/{system}/{key}"},
        "source_order": [], "by_sync": None,
    }
