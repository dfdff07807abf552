"""Replay dead letters after a fix: their original bytes go back to their original topic."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer

from streams.errors import SyncError
from streams.produce import producer_config
from streams.settings import Settings
from streams.store import Store
from streams.topics import DLQ


def _letters(settings: Settings) -> list[dict[str, Any]]:
    """Every record of the dead-letter topic, decoded."""
    consumer = Consumer({**settings.kafka.client_config(), "group.id": "crm-erp-sync-dlq-replay",
                         "enable.auto.commit": False})
    decode = AvroDeserializer(SchemaRegistryClient(settings.registry.client_config()))
    try:
        meta = consumer.list_topics(DLQ, timeout=10).topics.get(DLQ)
        if meta is None or meta.error is not None:
            return []
        consumer.assign([TopicPartition(DLQ, p, 0) for p in meta.partitions])
        out: list[dict[str, Any]] = []
        idle = 0
        while idle < 3:
            batch = consumer.consume(1000, timeout=1.0)
            idle = 0 if batch else idle + 1
            out += [decode(m.value(), None) for m in batch if not m.error() and m.value() is not None]
        return out
    finally:
        consumer.close()


def replay(settings: Settings, store: Store, ids: Sequence[int] | None) -> int:
    """Send the selected (default: all not yet replayed) dead letters back; how many were sent."""
    index = [r for r in store.dead_letters(limit=100_000) if r["replayed_at"] is None]
    if ids:
        missing = set(ids) - {r["id"] for r in index}
        if missing:
            raise SyncError(f"no dead letter waiting for replay with id {', '.join(map(str, sorted(missing)))}",
                            hint="crm-erp-sync dlq list")
        index = [r for r in index if r["id"] in ids]
    wanted = {(r["stage"], r["topic"], r["partition"], r["offset"], r["item"]): r["id"] for r in index}
    producer = Producer(producer_config(settings))  # a key lands where the sync's own records of it are
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    sent: list[int] = []
    for letter in _letters(settings):
        key = (letter["stage"], letter["topic"], letter["partition"], letter["offset"], letter.get("item", 0))
        if key in wanted and wanted[key] not in sent:
            producer.produce(letter["topic"], key=letter["key"], value=letter["value"], on_delivery=delivered)
            sent.append(wanted[key])
    if producer.flush(30) or failures:
        raise SyncError(f"the broker did not take the replayed events ({'; '.join(failures) or 'timeout'})")
    store.mark_replayed(sent)
    return len(sent)
