"""Avro records of the sync topics (commands, conflicts), built from the pure core's output. Pure."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from streams.reconcile.core import Command, Conflict


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
