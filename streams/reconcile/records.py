"""Avro records of the sync topics (changes, commands, conflicts, canonical), built from pure values. Pure."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from streams.envelope import ChangeEvent
from streams.mapping.profile import Profile
from streams.reconcile.core import Command, Conflict, EntityState


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def command_record(entity: str, global_id: str, target_key: str, cmd: Command, cause_ms: int, cause_event: str,
                   now: datetime | None = None) -> dict[str, Any]:
    """A ``schemas/sync/command.avsc`` record."""
    return {
        "command_id": str(uuid.uuid4()), "entity": entity, "global_id": global_id, "system": cmd.system,
        "key": target_key, "field": cmd.field, "value_json": _json(cmd.value), "expect_json": _json(cmd.expect),
        "expect_row_json": _json(cmd.expect_row), "issued_at": now or datetime.now(tz=UTC),
        "cause_commit_time": datetime.fromtimestamp(cause_ms / 1000, tz=UTC), "cause_event": cause_event,
        "op": "set", "values_json": None,
    }


def create_record(entity: str, global_id: str, system: str, values: dict[str, Any], cause_ms: int,
                  cause_event: str) -> dict[str, Any]:
    """A ``create`` command: make the entity exist on ``system`` with canonical ``values``."""
    return {
        "command_id": str(uuid.uuid4()), "entity": entity, "global_id": global_id, "system": system, "key": "",
        "field": "", "value_json": "null", "expect_json": "null", "expect_row_json": "null",
        "issued_at": datetime.now(tz=UTC), "cause_commit_time": datetime.fromtimestamp(cause_ms / 1000, tz=UTC),
        "cause_event": cause_event, "op": "create", "values_json": _json(values),
    }


def document_command(op: str, rule: Any, global_id: str, target_key: str, payload: dict[str, Any],
                     meta: dict[str, Any]) -> dict[str, Any]:
    """A document command: ``document`` (create it with its lines) or ``row`` (set a rollup's columns).

    ``field`` names the rule, whose target the applier takes from its own copy of the profile.
    """
    return {
        "command_id": str(uuid.uuid4()), "entity": rule.entity, "global_id": global_id, "system": rule.target,
        "key": target_key, "field": rule.name, "value_json": "null", "expect_json": "null",
        "expect_row_json": "null", "issued_at": datetime.now(tz=UTC), "cause_commit_time": meta["source_commit_time"],
        "cause_event": meta["event_id"], "op": op, "values_json": _json(payload),
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
