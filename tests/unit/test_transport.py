"""The consumer's seek after a rebalance: a partition the group never committed goes back to its start."""

from __future__ import annotations

import asyncio
from typing import Any

from streams.transport import seek_to_committed_or_beginning


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
