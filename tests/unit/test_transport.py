"""Faust's consumer as the worker runs it: the seek after a rebalance, and a fetched batch handed over."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import faust

from streams import transport
from streams.transport import BatchDrain, seek_to_committed_or_beginning


class FakeConsumer:
    """aiokafka's two calls, recorded: committed offsets per partition, partitions sent to their beginning."""

    def __init__(self, committed: dict[str, int | None]) -> None:
        self.committed = committed
        self.to_beginning: list[str] = []

    async def seek_to_committed(self) -> dict[str, int | None]:
        return self.committed

    async def seek_to_beginning(self, *partitions: str) -> None:
        self.to_beginning += partitions


def test_uncommitted_partitions_are_read_from_their_beginning_not_from_where_the_fetcher_was() -> None:
    consumer: Any = FakeConsumer({"never-committed": None, "committed-zero": 0, "committed": 7})
    committed = asyncio.run(seek_to_committed_or_beginning(consumer))
    assert sorted(consumer.to_beginning) == ["committed-zero", "never-committed"]
    assert committed == {"never-committed": None, "committed-zero": 0, "committed": 7}


class Record:
    def __init__(self, topic: str, offset: int) -> None:
        self.topic, self.offset = topic, offset


def test_a_fetched_batch_reaches_the_streams_in_order_past_what_was_read_before_a_seek() -> None:
    """``BatchDrain._deliver``: Faust's per-record drain rules, applied to a whole fetched batch."""
    delivered: list[tuple[str, int]] = []
    gaps: list[tuple[str, int, int]] = []

    async def callback(message: Record) -> None:
        delivered.append((message.topic, message.offset))

    async def add_gap(tp: str, start: int, end: int) -> None:
        gaps.append((tp, start, end))

    drain: Any = SimpleNamespace(
        callback=callback, _read_offset=defaultdict(lambda: None, {"a": 5}), _add_gap=add_gap,
        app=SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True)))
    batch = [("a", Record("a", 4)), ("a", Record("a", 6)), ("b", Record("b", 0)), ("a", Record("a", 9))]
    batch += [("b", Record("b", n)) for n in range(1, 250)]  # long enough to yield to the loop on the way
    asyncio.run(BatchDrain._deliver(drain, batch))
    assert delivered == [("a", 6), ("b", 0), ("a", 9)] + [("b", n) for n in range(1, 250)]  # 4: read before
    assert gaps == [("a", 7, 9)]  # 7 and 8 missing (compacted away): acknowledged as a gap
    assert drain._read_offset == {"a": 9, "b": 249}


def test_agents_get_the_brokers_bytes_as_they_are_tombstones_included() -> None:
    app = faust.App("test-raw-bytes", broker="kafka://localhost:9", web_enabled=False)
    decode = transport.raw_topic(app, "t").schema.compile(app)
    for key, value in [(b"\x00\x00\x00\x00\x01k", b"\x00\x00\x00\x00\x02v"), (b"k", None)]:
        message = SimpleNamespace(key=key, value=value, headers=[("h", b"1")])
        event = asyncio.run(decode(message))
        assert (event.key, event.value, event.message, event.headers) == (key, value, message, {"h": b"1"})
