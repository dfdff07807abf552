"""Batch records on internal topics (pure): Kafka's key hash, grouping per partition, expansion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from streams import batching
from streams.errors import TransientError


def test_murmur2_is_kafkas() -> None:
    # org.apache.kafka.common.utils.UtilsTest.testMurmur2
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
             b"a-little-bit-longer-string": -1486304829,
             b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, b"abc": 479470107}
    assert {k: batching.murmur2(k) for k in cases} == cases


def test_partition_is_the_positive_hash_modulo_the_count() -> None:
    assert batching.partition_of(b"21", 8) == (-973932308 & 0x7FFFFFFF) % 8
    assert batching.partition_of(b"abc", 1) == 0


def test_records_are_grouped_per_topic_and_partition_in_order() -> None:
    keys = [f"g{n}".encode() for n in range(40)]
    records = [("t", k, b"v" + k) for k in keys] + [("u", b"g0", b"other topic")]
    groups = batching.group(records, lambda topic: 4)
    assert sum(len(g[2]) for g in groups) == 41
    for topic, partition, ks, vs in groups:
        assert all(batching.partition_of(k, 4) == partition for k in ks)
        assert vs == ([b"v" + k for k in ks] if topic == "t" else [b"other topic"])
        assert ks == [k for t, k, _ in records if t == topic and batching.partition_of(k, 4) == partition]
    assert len({(t, p) for t, p, _, _ in groups}) == len(groups)


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any = ()


def decoded(value: bytes) -> Any:
    if value == b"transient":
        raise TransientError("registry unreachable")
    if value.startswith(b"batch:"):
        items = value[6:].split(b",")
        return {"keys": [b"k" + i for i in items], "values": items}
    raise ValueError("not Avro")


def test_a_batch_record_becomes_its_items_named_by_their_index() -> None:
    plain = Message("t", 0, 1, b"k", b"plain")  # written before batches, or a dead letter replayed
    batch = Message("t", 0, 2, None, b"batch:a,b,c", [(batching.HEADER, b"1")])
    out = batching.expand([plain, batch], decoded)
    assert out[0] is plain
    assert [(m.offset, m.item, m.key, m.value) for m in out[1:]] == [
        (2, 0, b"ka", b"a"), (2, 1, b"kb", b"b"), (2, 2, b"kc", b"c")]
    assert batching.expand([plain], decoded) == [plain]


def test_a_batch_that_cannot_be_read_stays_whole_and_a_transient_failure_is_raised() -> None:
    bad = Message("t", 0, 3, None, b"garbage", {batching.HEADER: b"1"})
    assert batching.expand([bad], decoded) == [bad]  # the stage dead-letters it with its reason
    with pytest.raises(TransientError):
        batching.expand([Message("t", 0, 4, None, b"transient", [(batching.HEADER, b"1")])], decoded)


def test_runs_handed_to_a_stage_never_split_the_items_of_one_record() -> None:
    from streams.agents.loop import chunks

    items = [batching.Item("t", 0, 7, b"k", b"v", n) for n in range(5)]  # one record of 5
    plain = [Message("t", 0, o, b"k", b"v") for o in (8, 9, 10)]
    runs = chunks([plain[0], *items, *plain[1:]], 3)
    assert [len(r) for r in runs] == [6, 2]  # the run that reached 3 inside the record takes all of it
    assert [m for r in runs for m in r] == [plain[0], *items, *plain[1:]]
    assert chunks([], 3) == []
