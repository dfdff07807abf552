"""Faust's own ceiling: how fast one agent that does nothing takes batches from a topic.

The sync's worker is at least this slow per topic hop, whatever its own work costs: a reference
for the throughput figures. N records of 600 bytes go into one partition of a fresh Kafka broker
first; then a Faust worker (in a child process, as the sync's runs) takes them with the
worker's batch settings and reports the rate from its first batch to its last.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from streams.bench.report import write
from streams.local.kafka import KafkaCluster
from streams.local.scratch import scratch_dir

TOPIC = "bench.faust"


def _consume(bootstrap: str, events: int, datadir: str) -> None:
    """In the child: a Faust worker taking the topic in batches; prints the figures as one JSON line."""
    import faust

    from streams import transport
    from streams.app import BATCH, WITHIN

    app = faust.App("bench-faust-ceiling", broker=f"kafka://{bootstrap}", store="memory://", web_enabled=False,
                    consumer_auto_offset_reset="earliest", broker_session_timeout=6, broker_heartbeat_interval=1,
                    broker_rebalance_timeout=10, topic_disable_leader=True, datadir=datadir)
    transport.install(app, 50)
    seen = {"events": 0, "batches": 0, "first": 0.0}

    @app.agent(transport.raw_topic(app, TOPIC))
    async def take(stream: Any) -> Any:
        async for batch in stream.take_events(BATCH, within=WITHIN):
            seen["first"] = seen["first"] or time.monotonic()
            seen["events"] += len(batch)
            seen["batches"] += 1
            if seen["events"] >= events:
                elapsed = time.monotonic() - seen["first"]
                print(json.dumps({"events": seen["events"], "batches": seen["batches"], "seconds": round(elapsed, 2),
                                  "events_per_s": round(seen["events"] / elapsed)}), flush=True)
                os._exit(0)
            yield None

    sys.argv = ["bench-faust-ceiling", "worker", "-l", "warn"]
    app.main()


def run(events: int = 50_000, out: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Fill the topic, run the consuming worker, return its figures (also written as JSON to ``out``)."""
    with scratch_dir("bench") as root:
        broker = KafkaCluster(root / "kafka")
        try:
            broker.start()
            admin = AdminClient({"bootstrap.servers": broker.bootstrap})
            admin.create_topics([NewTopic(TOPIC, 1, 1)])[TOPIC].result(30)
            producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
            for i in range(events):
                while True:
                    try:
                        producer.produce(TOPIC, b"x" * 600, str(i).encode())
                        break
                    except BufferError:  # the client's queue is full: let the broker take some first
                        producer.poll(0.5)
                if i % 10_000 == 0:
                    producer.poll(0)
            if producer.flush(60):
                raise RuntimeError("the broker did not take every record")
            if progress:
                print(f"  {events} records in the broker; a Faust worker takes them ...", flush=True)
            child = subprocess.run(
                [sys.executable, "-c", "import sys; from streams.bench.faust_ceiling import _consume;"
                 f" _consume({broker.bootstrap!r}, {events}, {str(root / 'faust')!r})"],
                capture_output=True, text=True, timeout=600, check=False,
            )
            # Faust's worker sends print() to its log: the figures are the JSON object on some line.
            found = [line[line.index('{"events"'):] for line in (child.stdout + child.stderr).splitlines()
                     if '{"events"' in line]
            if not found:
                raise RuntimeError(f"the Faust worker reported nothing (exit {child.returncode}):"
                                   f" {child.stderr[-2000:]}")
            figures = json.loads(found[-1].strip())
        finally:
            broker.stop()
    return write({"benchmark": "faust-ceiling", "record_bytes": 600, **figures}, out)


def format_result(result: dict[str, Any]) -> str:
    """One line."""
    return (f"Faust alone, one agent taking batches and doing nothing: {result['events']} records of"
            f" {result['record_bytes']} bytes in {result['seconds']} s = {result['events_per_s']} events/s"
            f" ({result['batches']} batches)")
