"""The embedded schema registry, driven by confluent-kafka's official client, persisted in PostgreSQL."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from streams.local.harness import Harness
from streams.registry.server import RegistryServer
from streams.registry.store import RegistryStore

pytestmark = pytest.mark.integration

V1 = {"type": "record", "name": "Customer", "namespace": "test",
      "fields": [{"name": "id", "type": "string"},
                 {"name": "limit", "type": {"type": "bytes", "logicalType": "decimal", "precision": 14, "scale": 2}}]}
V2 = {**V1, "fields": [*V1["fields"], {"name": "name", "type": ["null", "string"], "default": None}]}
BAD = {**V1, "fields": [*V1["fields"], {"name": "tier", "type": "string"}]}  # new field, no default


@pytest.fixture()
def server(harness: Harness):  # type: ignore[no-untyped-def]
    srv = RegistryServer(RegistryStore(harness.conninfo("sync")), "127.0.0.1", 0).start()
    yield srv
    srv.stop()


def test_register_fetch_and_reject_incompatible(server: RegistryServer) -> None:
    client = SchemaRegistryClient({"url": server.url})
    id1 = client.register_schema("reg-test-value", Schema(json.dumps(V1), "AVRO"))
    id2 = client.register_schema("reg-test-value", Schema(json.dumps(V2), "AVRO"))
    assert id1 != id2
    assert client.register_schema("reg-test-value", Schema(json.dumps(V2, indent=4), "AVRO")) == id2
    assert json.loads(client.get_schema(id1).schema_str) == V1
    latest = client.get_latest_version("reg-test-value")
    assert (latest.version, latest.schema_id) == (2, id2)
    assert client.get_versions("reg-test-value") == [1, 2]
    assert client.lookup_schema("reg-test-value", Schema(json.dumps(V1), "AVRO")).version == 1
    assert client.get_compatibility() == "BACKWARD"
    assert client.test_compatibility("reg-test-value", Schema(json.dumps(BAD), "AVRO")) is False
    with pytest.raises(SchemaRegistryError) as err:
        client.register_schema("reg-test-value", Schema(json.dumps(BAD), "AVRO"))
    assert err.value.http_status_code == 409
    assert "tier" in err.value.error_message and "no default" in err.value.error_message
    # With compatibility NONE for the subject the same change is accepted.
    client.set_compatibility("reg-test-value", "NONE")
    assert client.register_schema("reg-test-value", Schema(json.dumps(BAD), "AVRO")) > id2


def test_invalid_schema_is_422(server: RegistryServer) -> None:
    client = SchemaRegistryClient({"url": server.url})
    with pytest.raises(SchemaRegistryError) as err:
        client.register_schema("reg-bad-value", Schema(json.dumps({"type": "record", "name": "X"}), "AVRO"))
    assert err.value.http_status_code == 422


def test_serializer_round_trip_and_ids_survive_restart(harness: Harness, server: RegistryServer) -> None:
    client = SchemaRegistryClient({"url": server.url})
    ser = AvroSerializer(client, json.dumps(V1))
    ctx = SerializationContext("reg-restart", MessageField.VALUE)
    payload = ser({"id": "C100001", "limit": Decimal("99999999999.99")}, ctx)
    schema_id = int.from_bytes(payload[1:5], "big")
    server.stop()

    again = RegistryServer(RegistryStore(harness.conninfo("sync")), "127.0.0.1", 0).start()
    try:
        fresh = SchemaRegistryClient({"url": again.url})
        assert json.loads(fresh.get_schema(schema_id).schema_str) == V1
        assert fresh.register_schema("reg-restart-value", Schema(json.dumps(V1), "AVRO")) == schema_id
        decoded = AvroDeserializer(fresh)(payload, ctx)
        assert decoded == {"id": "C100001", "limit": Decimal("99999999999.99")}
    finally:
        again.stop()


def test_the_sync_codecs_agree_with_the_official_serializer_both_ways(server: RegistryServer) -> None:
    from streams.codecs import AvroDecode, AvroEncode

    client = SchemaRegistryClient({"url": server.url})
    record = {"id": "C100002", "limit": Decimal("12345.67"), "name": "上海某某有限公司"}
    ours = AvroEncode(client, "reg-codec", json.dumps(V2)).dumps(record)
    official = AvroSerializer(client, json.dumps(V2))(record, SerializationContext("reg-codec", MessageField.VALUE))
    assert ours == official  # same registration, same id, same bytes
    assert AvroDeserializer(client)(ours, None) == record
    assert AvroDecode(client).loads(official) == record
    with pytest.raises(ValueError, match="not Confluent wire-format Avro"):
        AvroDecode(client).loads(b"plain text, not avro")
