"""A person's decision on a manual conflict, applied to both systems."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streams.codecs import schema_text
from streams.errors import SyncError
from streams.produce import producer_config
from streams.reconcile.core import resolve_manual
from streams.reconcile.records import cause_at, command_record
from streams.settings import Settings
from streams.store import Store
from streams.topics import commands_topic


def parse_value(text: str) -> Any:
    """``--value`` as JSON when it parses (numbers, true, null), else as text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def resolve(settings: Settings, store: Store, conflict_id: int, take: str | None, value: Any = None,
            by: str = "unknown") -> dict[str, Any]:
    """Resolve an open conflict with one side's value (``take``) or ``value``; what was sent.

    ``by`` names who decided: the audit trail shows the writes as a resolution by ``person:<by>``.
    """
    row = store.conflict(conflict_id)
    if row is None:
        raise SyncError(f"no conflict {conflict_id}", hint="crm-erp-sync conflicts list shows the open ones")
    if row["status"] != "open":
        raise SyncError(f"conflict {conflict_id} is already {row['status']} ({row['resolution']})")
    client = SchemaRegistryClient(settings.registry.client_config())
    producer = Producer(producer_config(settings))  # a key lands where the sync's own records of it are
    with psycopg.connect(**settings.store.conninfo()) as conn:
        state = store.lock_state(conn, row["entity"], row["global_id"])
        fs = state.fields.get(row["field"])
        if fs is None:
            raise SyncError(f"conflict {conflict_id}: no state for field {row['field']}")
        chosen = fs.seen.get(take) if take else value
        outcome = resolve_manual(state, row["field"], chosen, int(time.time() * 1000))
        failures: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        serializer = AvroSerializer(client, schema_text("sync/command.avsc"))
        for cmd in outcome.commands:
            key = row["crm_id"] if cmd.system == "crm" else row["erp_id"]
            if key is None:
                continue
            record = command_record(row["entity"], row["global_id"], key, cmd,
                                    cause_at(int(time.time() * 1000), f"conflict/{conflict_id}"),
                                    kind="resolution", decided_by=f"person:{by}")
            value_bytes = serializer(record, SerializationContext(commands_topic(cmd.system), MessageField.VALUE))
            producer.produce(commands_topic(cmd.system), key=row["global_id"].encode(), value=value_bytes,
                             on_delivery=delivered)
        if producer.flush(30) or failures:
            conn.rollback()
            raise SyncError(f"the broker did not take the commands ({'; '.join(failures) or 'timeout'})",
                            hint="check the broker; nothing was changed")
        store.save_state(conn, row["entity"], row["global_id"], outcome.state)
        store.mark_resolved(conn, conflict_id, f"manual:{take}" if take else "manual:value", chosen)
    return {"conflict": conflict_id, "field": row["field"], "value": chosen,
            "sent_to": [c.system for c in outcome.commands]}
