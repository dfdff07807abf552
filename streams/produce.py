"""The processors' writes to their output topics, through librdkafka.

Faust's own send path costs tens of microseconds of Python per record (channel, future message,
aiokafka's accumulator); the processors write one or more records per event, so that was one of
their largest costs. Here a record is one C call (``produce``), a batch is awaited as a whole, and
a background thread serves the delivery reports. Idempotent with ``acks=all``: a retried send
never duplicates inside the broker, and records of one key keep their order. Keys are hashed like
the Java client's (murmur2), so a key lands on the partition any Kafka client would choose.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams import batching
from streams.errors import TransientError
from streams.settings import Settings


def producer_config(settings: Settings) -> dict[str, Any]:
    """Idempotent, acks=all, Java-compatible partitioning, small linger (a batch is sent at once)."""
    return {
        **settings.kafka.client_config(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "partitioner": "murmur2_random",
        "queue.buffering.max.messages": 200_000,
        # A record the broker has not acknowledged within this is reported failed (the batch is retried).
        "message.timeout.ms": int(settings.processors.send_timeout_s * 1000),
    }


class Outputs:
    """Encode and send ``(topic, key, record)``s; :meth:`send` returns once the broker has them all.

    The records of one send to a ``batched`` topic go as one batch record per partition
    (:mod:`streams.batching`; ``encoders[batching.SUBJECT]`` writes it).
    """

    def __init__(self, settings: Settings, encoders: dict[str, Callable[[Any], bytes]],
                 batched: frozenset[str] = frozenset()) -> None:
        self._encoders = encoders
        self._batched = batched
        self._partitions: dict[str, int] = {}
        self._producer = Producer(producer_config(settings))
        self._timeout = settings.processors.send_timeout_s + 5.0  # librdkafka reports failures first
        # Delivery reports on their own thread. It ends with the process: a batch not yet reported
        # was never acknowledged, so its source offsets were not committed and it is read again.
        threading.Thread(target=self._poll, name="outputs-delivery", daemon=True).start()

    def partitions(self, topic: str) -> int:
        """How many partitions ``topic`` has (asked once per process: they are set before the workers start)."""
        if topic not in self._partitions:
            try:
                found = self._producer.list_topics(topic, timeout=10).topics[topic]
            except KafkaException as exc:
                raise TransientError(f"the partitions of {topic}: {exc}") from exc
            if found.error is not None or not found.partitions:
                raise TransientError(f"the partitions of {topic}: {found.error or 'none'}")
            self._partitions[topic] = len(found.partitions)
        return self._partitions[topic]

    def _poll(self) -> None:
        while True:
            self._producer.poll(0.1)  # runs the delivery callbacks

    async def send(self, records: Iterable[tuple[str, str, Any]]) -> int:
        """Send every record; wait until the broker acknowledged all of them (raise if any failed)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        errors: list[KafkaError] = []
        lock = threading.Lock()
        count, left = 0, 1  # one for the producing loop itself, so an early report cannot end the batch

        def settle() -> None:
            if not done.done():
                done.set_result(None)

        def one_less() -> bool:
            nonlocal left
            with lock:
                left -= 1
                return left == 0

        def report(err: KafkaError | None, _: Message) -> None:  # on the delivery thread
            if err is not None:
                errors.append(err)
            if one_less():
                loop.call_soon_threadsafe(settle)

        out: list[tuple[str, bytes, bytes | None, dict[str, Any]]] = []  # all encoded before any is sent
        items: list[tuple[str, bytes, bytes]] = []
        for topic, key, record in records:
            if topic in self._batched:
                items.append((topic, key.encode(), self._encoders[topic](record)))
            else:
                out.append((topic, self._encoders[topic](record), key.encode(), {}))
        if items:
            wrap = self._encoders[batching.SUBJECT]
            out += [(topic, wrap({"keys": keys, "values": values}), None,
                     {"partition": partition, "headers": [(batching.HEADER, b"1")]})
                    for topic, partition, keys, values in batching.group(items, self.partitions)]
        for topic, value, key_bytes, kwargs in out:
            with lock:
                left += 1
            count += 1
            while True:
                try:
                    self._producer.produce(topic, value, key_bytes, on_delivery=report, **kwargs)
                    break
                except BufferError:  # the local queue is full: let it drain
                    await asyncio.sleep(0.01)
        if one_less():
            settle()
        try:
            await asyncio.wait_for(asyncio.shield(done), self._timeout)
        except TimeoutError:
            raise TransientError(f"the broker acknowledged {count - left} of {count} records within"
                                 f" {self._timeout:.0f}s") from None
        if errors:
            raise TransientError(f"the broker did not take {len(errors)} of {count} records: {errors[0]}")
        return count
