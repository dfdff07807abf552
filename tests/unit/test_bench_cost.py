"""`bench cost`: how py-spy samples, PostgreSQL backends and topics are attributed to the sync's parts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from streams.bench.cost import jit_seconds, pg_role, stage_of, stage_shares, topic_family

LOOP = "batches (streams/agents/loop.py:88)"


def test_a_sample_goes_to_the_stage_whose_code_is_on_its_stack() -> None:
    assert stage_of(["run (asyncio/events.py:80)", LOOP, "normalize (streams/agents/normalize.py:40)",
                     "decode (streams/codecs.py:10)"]) == "normalize"
    assert stage_of(["_worker (concurrent/futures/thread.py:83)", "Processors.locked (streams/app.py:220)",
                     "lock_states (streams/store.py:300)"]) == "reconcile"
    assert stage_of(["_worker (concurrent/futures/thread.py:83)", "run (streams/apply/executor.py:120)"]) == "apply"
    # Faust taking the batch for an agent: no stage's code on the stack yet
    assert stage_of(["run (asyncio/events.py:80)", LOOP, "take_events (faust/streams.py:500)"]
                    ) == "faust: taking batches (consumer, dispatch)"
    # no stage: the innermost library running names it
    assert stage_of(["main (streams/cli.py:587)", "_run_once (asyncio/base_events.py:1900)",
                     "_fetch (aiokafka/consumer/fetcher.py:10)"]) == "aiokafka (fetch, protocol)"
    assert stage_of(["main (streams/cli.py:587)", "Outputs._poll (streams/produce.py:50)"]
                    ) == "sends (librdkafka producer)"
    assert stage_of(["main (streams/cli.py:587)", "_run_once (asyncio/base_events.py:1900)"]
                    ) == "asyncio event loop and threads"


def test_py_spy_raw_lines_are_summed_per_stage(tmp_path: Path) -> None:
    raw = tmp_path / "worker.pyspy"
    raw.write_text(f"run (asyncio/events.py:80);{LOOP};normalize (streams/agents/normalize.py:40) 7\n"
                   f"run (asyncio/events.py:80);{LOOP};reconcile (streams/agents/reconcile.py:30) 3\n"
                   f"run (asyncio/events.py:80);{LOOP};normalize (streams/agents/normalize.py:41) 2\n",
                   encoding="utf-8")
    assert stage_shares(raw) == Counter({"normalize": 9, "reconcile": 3})


def test_only_the_syncs_backends_count_and_each_by_its_role() -> None:
    assert pg_role("walsender", "Debezium Streaming", "crm") == "postgresql: logical decoding for Debezium"
    assert pg_role("client backend", "crm-erp-sync apply erp", "erp") == "postgresql: applier writes"
    assert pg_role("client backend", "crm-erp-sync", "sync") == "postgresql: sync store"
    assert pg_role("client backend", "", "crm") is None  # the load's own connections
    assert pg_role("checkpointer", "", None) is None


def test_topics_are_counted_by_family() -> None:
    assert topic_family("crm.public.accounts") == "raw (Debezium)"
    assert topic_family("sync.changes.customer") == "sync.changes.*"
    assert topic_family("sync.commands.erp") == "sync.commands.*"
    assert topic_family("canonical.customer.v1") == "canonical.*"
    assert topic_family("__consumer_offsets") == "Kafka's and Connect's own (offsets, status)"


def test_a_jvms_jit_compiler_is_its_compiler_threads_cpu(tmp_path: Path) -> None:
    def thread(tid: int, name: str, utime: int, stime: int) -> None:
        folder = tmp_path / "4242" / "task" / str(tid)
        folder.mkdir(parents=True)
        fields = ["S", "1"] + ["0"] * 9 + [str(utime), str(stime)] + ["0"] * 30  # utime, stime: fields 14, 15
        (folder / "stat").write_text(f"{tid} ({name}) {' '.join(fields)}\n", encoding="utf-8")

    thread(1, "java", 500, 100)
    thread(2, "C2 CompilerThre", 300, 20)
    thread(3, "C1 CompilerThre", 40, 10)
    thread(4, "task-thread-crm", 900, 0)  # a ")" or a space in a name must not shift the fields
    thread(5, "odd) name (x", 7, 0)
    assert jit_seconds(4242, tmp_path) == (300 + 20 + 40 + 10) / 100
