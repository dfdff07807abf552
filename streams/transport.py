"""Faust's aiokafka transport with a configurable fetch wait, and no records lost on a rebalance.

Faust hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer. A fetch over partitions with
no new data is answered only when that wait ends, and a consumer does not fetch again before the
answer, so data arriving meanwhile waits up to 1.5 s per topic hop; the sync has three hops (raw,
changes, commands). The wait is an aiokafka constructor argument kept until the consumer starts,
so it is set on the new consumer.

Faust seeks every assigned partition back to its committed offset after a rebalance (and when it
finds records fetched while its flow was stopped), dropping what it fetched meanwhile. aiokafka's
``seek_to_committed`` seeks only partitions whose committed offset is above 0, so a partition the
group has not committed yet kept its advanced position: the records fetched and dropped were never
delivered (seen with two workers joining while Debezium wrote a snapshot). Here such partitions
go back to their beginning, as ``auto_offset_reset=earliest`` means.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as driver


async def seek_to_committed_or_beginning(consumer: aiokafka.AIOKafkaConsumer) -> Mapping[Any, int]:
    """Every assigned partition to its committed offset, or to its beginning when none was committed."""
    committed: Mapping[Any, int] = await consumer.seek_to_committed()
    fresh = [tp for tp, offset in committed.items() if not offset or offset <= 0]
    if fresh:
        await consumer.seek_to_beginning(*fresh)
    return committed


def install(app: faust.App, fetch_max_wait_ms: int) -> None:
    """Make ``app``'s consumer wait at most ``fetch_max_wait_ms`` for a fetch."""

    class ConsumerThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_max_wait_ms  # read by start() when it builds the fetcher
            return consumer

        async def seek_to_committed(self) -> Mapping[Any, int]:
            done: Mapping[Any, int] = await self.call_thread(seek_to_committed_or_beginning, self._ensure_consumer())
            return done

    class Consumer(driver.Consumer):
        def _new_consumer_thread(self) -> ConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(driver.Transport):
        pass

    Transport.Consumer = Consumer
    app.transport = Transport(app.conf.broker_consumer, app)
