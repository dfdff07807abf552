"""Records that carry a batch of records, on the internal topics where Faust's per-event cost adds up.

Faust's consumer machinery costs a fixed amount per Kafka record (the conductor, the stream, the
event, its acknowledgement): in a backlog drain it was a third of the worker's time, and every
captured change crossed it three times. On a *batched* topic (``sync.changes.<entity>``,
``sync.commands.*``) one send of a stage becomes one Kafka record per partition it touches: a
``RecordBatch`` whose items are the records it would have written one by one — each item's key
and value exactly those bytes (Confluent-framed Avro) — marked by the header :data:`HEADER`.
Each item goes to the partition its own key picks with the Java client's hash
(:func:`partition_of`), so an entity's changes stay on one partition, in order, across the
records written one by one before this format and the batches after it.
The consumer expands a batch back into its items (:func:`expand`); a record without the
header is an item by itself (one written before, by ``conflicts resolve``, or a dead letter
replayed). An applier applies all items of a record in one transaction (its progress is the
record's offset): ``agents.loop.chunks`` never splits them.

An item's position is its batch's topic, partition and offset plus its index in the batch
(:class:`Item`): dead letters name it so.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from streams.errors import TransientError

HEADER = "crm-erp-sync-batch"
SCHEMA = "sync/record_batch.avsc"
SUBJECT = "crm_erp_sync.sync.RecordBatch"  # record-name strategy: the topic's own subject keeps its schema

_M = 0x5BD1E995


@functools.lru_cache(maxsize=1 << 16)
def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (``org.apache.kafka.common.utils.Utils.murmur2``), as a signed 32-bit int."""
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    end = length & ~3
    for i in range(0, end, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _M) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * _M) & 0xFFFFFFFF
        h = ((h * _M) & 0xFFFFFFFF) ^ k
    rest = length & 3
    if rest:
        if rest == 3:
            h ^= data[end + 2] << 16
        if rest >= 2:
            h ^= data[end + 1] << 8
        h ^= data[end]
        h = (h * _M) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * _M) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_of(key: bytes, partitions: int) -> int:
    """The partition the Java client's default partitioner (and librdkafka's ``murmur2_random``) picks."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def group(records: Iterable[tuple[str, bytes, bytes]], partitions: Callable[[str], int]
          ) -> list[tuple[str, int, list[bytes], list[bytes]]]:
    """Encoded ``(topic, key, value)``s as one ``(topic, partition, keys, values)`` per partition, in order."""
    groups: dict[tuple[str, int], tuple[list[bytes], list[bytes]]] = {}
    for topic, key, value in records:
        keys, values = groups.setdefault((topic, partition_of(key, partitions(topic))), ([], []))
        keys.append(key)
        values.append(value)
    return [(topic, partition, keys, values) for (topic, partition), (keys, values) in groups.items()]


@dataclass(frozen=True)
class Item:
    """One record of a batch, as a stage handles it: the attributes of a Kafka message it reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    item: int  # its index in the batch record at ``offset``


def is_batch(headers: Any) -> bool:
    """Whether a consumed record with these headers (pairs, or a dict) is a batch record."""
    pairs = headers.items() if isinstance(headers, dict) else headers or ()
    return any(name == HEADER for name, _ in pairs)


def expand(messages: Sequence[Any], decode: Callable[[bytes], Any]) -> list[Any]:
    """Each batch record replaced by its items, in order; other messages as they are.

    ``decode`` reads a batch record's value. A transient failure (the registry unreachable) is
    raised, to be retried; a record that cannot be read as a batch stays as it is, and the stage
    dead-letters it as any record it cannot read.
    """
    out: list[Any] = []
    for m in messages:
        if not is_batch(m.headers):
            out.append(m)
            continue
        try:
            batch = decode(m.value)
            pairs = list(zip(batch["keys"], batch["values"], strict=True))
        except TransientError:
            raise
        except Exception:  # not a batch after all: the stage says why
            out.append(m)
            continue
        out += [Item(m.topic, m.partition, m.offset, k, v, n)
                for n, (k, v) in enumerate(pairs)]
    return out
