"""Faust's aiokafka transport with a configurable fetch wait.

Faust hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer. A fetch over partitions with
no new data is answered only when that wait ends, and a consumer does not fetch again before the
answer, so data arriving meanwhile waits up to 1.5 s per topic hop; the sync has three hops (raw,
changes, commands). The wait is an aiokafka constructor argument kept until the consumer starts,
so it is set on the new consumer.
"""

from __future__ import annotations

from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as driver


def install(app: faust.App, fetch_max_wait_ms: int) -> None:
    """Make ``app``'s consumer wait at most ``fetch_max_wait_ms`` for a fetch."""

    class ConsumerThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_max_wait_ms  # read by start() when it builds the fetcher
            return consumer

    class Consumer(driver.Consumer):
        def _new_consumer_thread(self) -> ConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(driver.Transport):
        pass

    Transport.Consumer = Consumer
    app.transport = Transport(app.conf.broker_consumer, app)
