"""The Kafka release deploy/kubernetes runs (Strimzi's choice, older than the native stack's): brokers
and Kafka Connect of that release, with the same Debezium plugin, carry the sync both ways."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import yaml

from streams.local import jars
from streams.local.harness import (
    REPO,
    Harness,
    edits_sync_both_ways,
    running,
    scratch_harness,
    wait_for_capture,
    wait_for_identity,
)

pytestmark = pytest.mark.integration
KUBE = REPO / "deploy" / "kubernetes"


def manifest_version() -> str:
    """The Kafka version of the Strimzi Kafka and KafkaConnect resources (one, or this test fails)."""
    versions = set()
    for name in ("kafka.yaml", "connect.yaml"):
        for doc in yaml.safe_load_all((KUBE / name).read_text(encoding="utf-8")):
            if doc and doc["kind"] == "Kafka":
                versions.add(str(doc["spec"]["kafka"]["version"]))
            elif doc and doc["kind"] == "KafkaConnect":
                versions.add(str(doc["spec"]["version"]))
    assert len(versions) == 1, versions
    return versions.pop()


@pytest.fixture(scope="module")
def deployed(failures: Callable[[], bool]) -> Iterator[Harness]:
    with scratch_harness("kube-kafka", failures, capture_mode="connect", kafka_version=manifest_version()) as h:
        yield h


def test_the_sync_runs_both_ways_on_the_kafka_release_kubernetes_deploys(deployed: Harness) -> None:
    h = deployed
    version = manifest_version()
    assert h.kafka is not None and h.kafka.nodes[0].server == jars.kafka(version)
    assert (jars.ensure(jars.kafka(version), h.jar_cache) / f"kafka_2.13-{version}.jar").is_file()
    with running(h.spawn("capture")):
        wait_for_capture(h)
        assert h.connect_worker is not None and h.connect_worker.runtime == jars.connect(version)
        with running(h.spawn("worker", log_name="worker.log")):
            wait_for_identity(h)
            edits_sync_both_ways(h, "021-41000000", 410000)
